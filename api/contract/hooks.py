"""Schemathesis hooks for the admin API contract test (`make test` runs it
through tests/e2e/contract.rs against the real binary).

Two parts of a deploy cannot be generated from the schema alone, so positive
(schema-valid) deploys get them filled in; negative cases are left as
generated, so the server must still reject every schema violation:

- `component`: a real WebAssembly component (the hello guest, path in
  $HOST_CONTRACT_COMPONENT). Random bytes are never a component (422), and
  whether bytes are a component is not something JSON Schema can say.
- `secrets` and `allow_outbound`: whether a secret exists depends on the
  host's environment and --secrets-dir, and the allow-list grammar (IPv6
  literals, ports) is checked by the server; both are covered by the host's
  own tests and its fuzz targets. Positive cases send them empty.
- `route`: required on an app's first deploy only (a rule about state, not
  shape). Positive cases without one get `/contract-NAME`.
- `instance_concurrency`: above 1 only for a WASI 0.3 component (a rule
  about the component, not the settings' shape) and with `instance_reuse`
  above 1; the contract component is WASI 0.2, so positive cases send 1.
  The host's own tests cover both refusals (tests/e2e/foreign.rs).
"""

import os

import schemathesis

DEPLOY = "/v1/apps/{name}/versions"

with open(os.environ["HOST_CONTRACT_COMPONENT"], "rb") as f:
    COMPONENT = f.read()


def _negative(case):
    meta = getattr(case, "meta", None)
    generation = getattr(meta, "generation", None)
    mode = getattr(generation, "mode", None)
    return mode is not None and mode.is_negative


@schemathesis.hook
def map_case(context, case):
    operation = context.operation
    if operation is None or operation.path != DEPLOY or _negative(case):
        return case
    if not isinstance(case.body, dict):
        return case
    case.body["component"] = COMPONENT
    if not isinstance(case.body.get("settings"), dict):
        case.body["settings"] = {}
    settings = case.body["settings"]
    name = (case.path_parameters or {}).get("name", "app")
    settings.setdefault("route", f"/contract-{name}")
    if "secrets" in settings:
        settings["secrets"] = {}
    if "allow_outbound" in settings:
        settings["allow_outbound"] = []
    if "instance_concurrency" in settings:
        settings["instance_concurrency"] = 1
    return case
