#!/usr/bin/env python3
"""The tally of tests/run.sh's steps, read from libtest's logs.

  tally.py skips LOG...          prints "--skip NAME" per test that passed
                                 (one test at a time, --nocapture), one word
                                 per line
  tally.py summary LOG...        prints the tally of those tests in libtest's
                                 words, and the SKIP lines they printed
  tally.py close LOGDIR SECONDS  prints each step's duration and attempts and
                                 the closing line "N passed, N failed, N
                                 skipped"; exits 1 if anything failed

tests/run.sh reruns a failed VM step without the tests that already passed
in an earlier attempt, and carries their results over with the summary.

The closing tally counts libtest's "test result:" lines and the emulated
host self-test's own line; a step that failed without a failing test (a
lint, a crash) counts as one failure itself. A test that could not run
prints one "SKIP: reason" line (alone, or after libtest's "test NAME ... "
when it runs one at a time) and returns, which libtest reports as passed:
it counts as skipped instead.
"""
import pathlib
import re
import sys

SKIP = re.compile(r"(?:^|\.\.\. )SKIP: ")


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
                if SKIP.search(line):
                    output.append(rest if m else line)
                if rest.strip() == "ok":
                    found[current] = output
                    current = None
                elif rest.strip() == "FAILED":
                    current = None
    return found


def close(logdir, seconds):
    """Prints the steps and the closing line; whether nothing failed."""
    print("=== steps: seconds, attempts (VM steps)")
    total = 0
    for line in (logdir / "steps").read_text().splitlines():
        name, secs, attempts = line.split("\t")
        total += int(secs)
        print(f"{int(secs):6d} s  {attempts:>2}  {name}")
    print(f"{total:6d} s      in the steps, of {seconds} s in all")
    failed_steps = set()
    marker = logdir / "step-failures"
    if marker.exists():
        failed_steps = {int(n) for n in marker.read_text().split()}
    passed_count = failed = skipped = 0
    for log in sorted(logdir.glob("*.log"), key=lambda p: int(p.stem)):
        step_failed = 0
        for line in log.read_text(errors="replace").splitlines():
            if SKIP.search(line):
                passed_count -= 1
                skipped += 1
                continue
            m = re.search(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
            if not m:
                m = re.fullmatch(r"(\d+) passed, (\d+) failed(?:, (\d+) skipped)?", line.strip())
            if m:
                passed_count += int(m[1])
                step_failed += int(m[2])
                skipped += int(m[3] or 0)
        if int(log.stem) in failed_steps and step_failed == 0:
            step_failed = 1
        failed += step_failed
    print(f"{passed_count} passed, {failed} failed, {skipped} skipped")
    return failed == 0


def main():
    mode = sys.argv[1]
    if mode == "close":
        sys.exit(0 if close(pathlib.Path(sys.argv[2]), int(sys.argv[3])) else 1)
    tests = passed(sys.argv[2:])
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
