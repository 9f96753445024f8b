"""Reads a tempest run's subunit v2 stream and prints, per service
(tempest.api.<service>), how many tests passed, failed and were skipped,
then every failure by test id and every skip reason with its count. Also
writes the same as JSON.

Usage: summary.py STREAM JSON_OUT
"""
import collections
import json
import sys

import subunit
import testtools

stream_path, json_out = sys.argv[1:3]


class Collect(testtools.StreamResult):
    """The last status of each test, and the reasons given for skips."""

    def __init__(self):
        super().__init__()
        self.status_of = {}
        self.reasons = collections.defaultdict(list)

    def status(self, test_id=None, test_status=None, file_name=None, file_bytes=None, **kw):
        if test_id is None:
            return
        if test_status:
            self.status_of[test_id] = test_status
        if file_name == "reason" and file_bytes:
            self.reasons[test_id].append(bytes(file_bytes).decode(errors="replace"))


result = Collect()
with open(stream_path, "rb") as f:
    subunit.ByteStreamToStreamResult(f, non_subunit_name="stdout").run(result)

per_service = collections.defaultdict(collections.Counter)
failures = []
skips = collections.Counter()
for test_id, status in sorted(result.status_of.items()):
    if not test_id.startswith("tempest."):
        continue  # setUpClass and the like report under the class: counted below
    parts = test_id.split(".")
    service = parts[2] if len(parts) > 2 and parts[1] == "api" else parts[1]
    if status in ("success", "xfail"):
        per_service[service]["passed"] += 1
    elif status == "skip":
        per_service[service]["skipped"] += 1
        reason = "".join(result.reasons.get(test_id, [])).strip() or "(no reason given)"
        skips[(service, reason)] += 1
    elif status in ("fail", "uxsuccess"):
        per_service[service]["failed"] += 1
        failures.append(test_id)
# Class-level failures (a setUpClass that failed) arrive as "setUpClass
# (tempest.api...Class)": each counts as one failure of its service.
for test_id, status in sorted(result.status_of.items()):
    if test_id.startswith("setUpClass") or test_id.startswith("tearDownClass"):
        inner = test_id[test_id.find("(") + 1 : test_id.rfind(")")]
        parts = inner.split(".")
        service = parts[2] if len(parts) > 2 else "?"
        if status == "fail":
            per_service[service]["failed"] += 1
            failures.append(test_id)
        elif status == "skip":
            reason = "".join(result.reasons.get(test_id, [])).strip() or "(no reason given)"
            per_service[service]["skipped classes"] += 1
            skips[(service, reason)] += 1

print(f"{'service':<16} {'passed':>7} {'failed':>7} {'skipped':>8} {'skipped classes':>16}")
for service in sorted(per_service):
    c = per_service[service]
    print(f"{service:<16} {c['passed']:>7} {c['failed']:>7} {c['skipped']:>8} {c['skipped classes']:>16}")
if failures:
    print("\nfailed:")
    for f in failures:
        print("  " + f)
if skips:
    print("\nskip reasons (count):")
    for (service, reason), n in sorted(skips.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {n:>4}  {service}: {reason}")
with open(json_out, "w") as f:
    json.dump(
        {
            "services": {s: dict(c) for s, c in per_service.items()},
            "failed": failures,
            "skips": [{"service": s, "reason": r, "count": n} for (s, r), n in skips.items()],
        },
        f,
        indent=2,
    )
