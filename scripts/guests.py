"""Print the workspace's guest packages (for the Makefile), read from
`cargo metadata --no-deps` on stdin: every member with a `cdylib` target is a
guest component built for wasm32-wasip2. `bench` prints those marked
`[package.metadata.guest] bench = true` (built only by `make bench`), `test`
all the others."""

import json
import sys

kind = sys.argv[1] if len(sys.argv) > 1 else "test"
meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
names = []
for package in meta["packages"]:
    if package["id"] not in members:
        continue
    if not any("cdylib" in target["crate_types"] for target in package["targets"]):
        continue
    bench = bool(((package.get("metadata") or {}).get("guest") or {}).get("bench"))
    if bench == (kind == "bench"):
        names.append(package["name"])
print(" ".join(sorted(names)))
