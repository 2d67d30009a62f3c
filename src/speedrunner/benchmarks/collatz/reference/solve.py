"""Find the start value below LIMIT whose Collatz chain is the longest.

The chain of n: n -> n/2 if n is even, else 3n+1, until it reaches 1. Its length counts the
terms, n and 1 included. Prints the answer and the time the search took.
"""

import time

LIMIT = 100_000


def solve(limit):
    # lengths[n] caches the chain length of every n below the limit; a chain is followed only until
    # it drops below its start, where the cached length takes over.
    lengths = [0] * limit
    lengths[1] = 1
    best_start, best_length = 1, 1
    for start in range(2, limit):
        n, steps = start, 0
        while n >= start:
            if n & 1:
                n = (3 * n + 1) >> 1  # an odd step is always followed by an even one: take both
                steps += 2
            else:
                n >>= 1
                steps += 1
        length = lengths[n] + steps
        lengths[start] = length
        if length > best_length:
            best_start, best_length = start, length
    return best_start, best_length


if __name__ == "__main__":
    t0 = time.perf_counter()
    answer, length = solve(LIMIT)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    print(f"answer: {answer} (chain length {length})")
    print(f"runtime_ms: {elapsed_ms:.1f}")
