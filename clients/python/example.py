"""Queries the clerk-sync directory from Python: get a user by id, find one by
email address, or list users page by page. Prints users as JSON.

    python example.py --address 127.0.0.1:50051 get user_29w83sxmDNGwOuEthce5gg56FcC
    python example.py find example@example.org
    python example.py list --page-size 100 --changed-since 2024-01-01T00:00:00Z

TLS: --ca-file PEM (the CA of the sync-service's certificate). Bearer token:
--token, or better CLERK_SYNC_TOKEN (command lines are visible to other users).
Run `python generate.py` once first.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

import grpc
from google.protobuf import json_format, timestamp_pb2

from clerk_sync_client import connect, directory_pb2, directory_pb2_grpc


def print_user(user) -> None:
    print(json_format.MessageToJson(user, indent=None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="sync-service host:port")
    parser.add_argument("--token", default=os.environ.get("CLERK_SYNC_TOKEN"),
                        help="bearer token (default: $CLERK_SYNC_TOKEN)")
    parser.add_argument("--ca-file", help="PEM CA certificate: connect with TLS")
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("get", help="one user by id")
    get.add_argument("id")
    find = commands.add_parser("find", help="the user owning an email address")
    find.add_argument("email")
    listing = commands.add_parser("list", help="every user, oldest change first")
    listing.add_argument("--page-size", type=int, default=100)
    listing.add_argument("--changed-since", type=datetime.fromisoformat,
                         help="only users changed at or after this ISO 8601 time")
    args = parser.parse_args(argv)

    with connect(args.address, token=args.token, ca_file=args.ca_file) as channel:
        directory = directory_pb2_grpc.UserDirectoryServiceStub(channel)
        try:
            if args.command == "get":
                print_user(directory.GetUser(directory_pb2.GetUserRequest(id=args.id)).user)
            elif args.command == "find":
                request = directory_pb2.FindUserByEmailRequest(email_address=args.email)
                print_user(directory.FindUserByEmail(request).user)
            else:
                request = directory_pb2.ListUsersRequest(page_size=args.page_size)
                if args.changed_since is not None:
                    since = timestamp_pb2.Timestamp()
                    since.FromDatetime(args.changed_since)
                    request.changed_since.CopyFrom(since)
                while True:
                    page = directory.ListUsers(request)
                    for user in page.users:
                        print_user(user)
                    if not page.next_page_token:
                        break
                    request.page_token = page.next_page_token
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
