"""Find the start value below LIMIT whose Collatz chain is the longest.

The chain of n: n -> n/2 if n is even, else 3n+1, until it reaches 1. Its length counts the
terms, n and 1 included. Prints the answer and the time the search took.
"""

import time

LIMIT = 100_000


def chain_length(n):
    length = 1
    while n != 1:
        if n % 2 == 0:
            n = n // 2
        else:
            n = 3 * n + 1
        length += 1
    return length


def solve(limit):
    best_start, best_length = 1, 1
    for start in range(1, limit):
        length = chain_length(start)
        if length > best_length:
            best_start, best_length = start, length
    return best_start, best_length


if __name__ == "__main__":
    t0 = time.perf_counter()
    answer, length = solve(LIMIT)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    print(f"answer: {answer} (chain length {length})")
    print(f"runtime_ms: {elapsed_ms:.1f}")
