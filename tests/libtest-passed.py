#!/usr/bin/env python3
"""The tests that passed in libtest logs (one test at a time, --nocapture).

  libtest-passed.py skips LOG...    prints "--skip NAME" per passed test, one word per line
  libtest-passed.py summary LOG...  prints the tally of those tests in libtest's words,
                                    and the SKIP lines they printed

tests/run.sh reruns a failed VM step without the tests that already passed
in an earlier attempt, and carries their results over with the summary.
"""
import re
import sys


def passed(paths):
    """{name: [SKIP lines it printed]} for each test that passed."""
    found = {}
    for path in paths:
        current, output = None, []
        with open(path, errors="replace") as log:
            for line in log.read().splitlines():
                m = re.match(r"test (\S+) \.\.\. ?(.*)$", line)
                if m:
                    current, output, rest = m[1], [], m[2]
                else:
                    rest = line
                if current is None:
                    continue
                if re.search(r"(?:^|\.\.\. )SKIP: ", line):
                    output.append(rest if m else line)
                if rest.strip() == "ok":
                    found[current] = output
                    current = None
                elif rest.strip() == "FAILED":
                    current = None
    return found


def main():
    mode, paths = sys.argv[1], sys.argv[2:]
    tests = passed(paths)
    if mode == "skips":
        for name in sorted(tests):
            print("--skip")
            print(name)
    elif mode == "summary":
        for name in sorted(tests):
            for line in tests[name]:
                print(f"test {name} ... {line.strip()}")
        print(
            f"carried over from earlier attempts: test result: ok. {len(tests)} passed; "
            "0 failed; 0 ignored"
        )
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
