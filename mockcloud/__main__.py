"""`python -m mockcloud STACK [key=value ...]`: what `pulumi preview` would show, run here.

Builds the stack's graph under the mock engine and prints every resource, the commands
that would run on droplets (never their payloads: they carry secrets) and the outputs.
"""

import argparse
import collections
import json

from . import deploy, stack_settings
from model.settings import SettingsError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m mockcloud")
    parser.add_argument("stack", help="staging or production (reads Pulumi.<stack>.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to change for this run")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.overrides)
    try:
        settings = stack_settings(args.stack, **overrides)
    except SettingsError as problems:
        print(problems)
        return 1
    deployment = deploy(settings)
    print(f"stack {settings.stack}: {len(deployment.resources)} resources")
    for kind, count in sorted(collections.Counter(r.type for r in deployment.resources).items()):
        print(f"  {count:3} x {kind}")
    print("droplets:")
    for droplet in deployment.of_type("droplet:Droplet"):
        state = droplet.state
        print(f"  {state['name']:24} {state['size']:14} public {state['ipv4Address']:15} "
              f"private {state['ipv4AddressPrivate']:15} user_data {len(state['userData'])} bytes")
    print("commands over SSH:")
    for cmd in deployment.of_type("remote:Command"):
        print(f"  {cmd.name:24} {cmd.state['create']}")
    print("outputs:")
    print(json.dumps(deployment.outputs, indent=2))
    return 0


raise SystemExit(main())
