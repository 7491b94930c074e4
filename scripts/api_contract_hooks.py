"""schemathesis hooks for scripts/api_contract.py.

A configuration schemathesis generates may be valid, and booting it runs the
built-in firmware with the generated command line, which (empty, or not a
workload) powers off at once and ends covm. The run must keep covm up, so
every vm.create body gets a long-running guest: the `dirty` workload on 1 MiB
at 1 MiB/s. Nothing else is changed.
"""

import schemathesis

LONG_RUNNING = "workload=dirty mib=1 rate=1"


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != "/vm.create" or not isinstance(case.body, dict):
        return
    payload = case.body.get("payload")
    if isinstance(payload, dict):
        payload["cmdline"] = LONG_RUNNING
