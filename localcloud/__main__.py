"""python -m localcloud {image|status|teardown|leftovers}"""

import argparse
import json
from dataclasses import asdict

from . import cloud, image, teardown


def main() -> None:
    p = argparse.ArgumentParser(prog="localcloud")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("image", help="build the droplet image (cached)")
    sub.add_parser("status", help="show droplets")
    td = sub.add_parser("teardown", help="remove everything, also after a killed run")
    td.add_argument("--keep-volumes", action="store_true")
    sub.add_parser("leftovers", help="list what of ours is still on the machine")
    args = p.parse_args()
    if args.cmd == "image":
        print(image.build())
    elif args.cmd == "status":
        print(json.dumps({n: asdict(i) for n, i in cloud.status().items()}, indent=1))
    elif args.cmd == "teardown":
        teardown.teardown(keep_volumes=args.keep_volumes)
    elif args.cmd == "leftovers":
        print(json.dumps(teardown.leftovers(), indent=1))


main()
