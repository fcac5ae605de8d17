"""The generated Python client against a real sync-service: events applied
through UserSyncService are read back through UserDirectoryService, errors
arrive with their gRPC codes, and the example script works end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest
from google.protobuf import timestamp_pb2

from clerk_sync_client import (
    BearerToken,
    connect,
    directory_pb2,
    directory_pb2_grpc,
    organization_pb2,
    organization_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
    user_pb2,
)
from conftest import CLIENT_ROOT, READ_TOKEN, WRITE_TOKEN


def timestamp(millis: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)


def user(user_id: str, email: str, updated_at_ms: int, first_name: str = "Ada") -> user_pb2.User:
    return user_pb2.User(
        id=user_id,
        primary_email_address=email,
        # FindUserByEmail matches verified addresses only.
        email_addresses=[user_pb2.EmailAddress(address=email, verified=True, primary=True)],
        first_name=first_name,
        display_name=f"{first_name} Lovelace",
        created_at=timestamp(1_700_000_000_000),
        updated_at=timestamp(updated_at_ms),
    )


def create(channel: grpc.Channel, event_id: str, new_user: user_pb2.User) -> int:
    writer = sync_pb2_grpc.UserSyncServiceStub(channel)
    request = sync_pb2.ApplyUserCreatedRequest(
        event=sync_pb2.UserCreated(
            meta=sync_pb2.EventMeta(event_id=event_id, occurred_at=new_user.updated_at),
            user=new_user,
        )
    )
    return writer.ApplyUserCreated(request, timeout=10).outcome


def test_applied_users_are_read_back_by_id_and_email(sync_service):
    with connect(sync_service.address) as channel:
        ada = user("user_ada", "Ada@Example.ORG", 1_700_000_000_500)
        assert create(channel, "msg_py_1", ada) == sync_pb2.OUTCOME_APPLIED
        assert create(channel, "msg_py_1", ada) == sync_pb2.OUTCOME_DUPLICATE

        directory = directory_pb2_grpc.UserDirectoryServiceStub(channel)
        fetched = directory.GetUser(directory_pb2.GetUserRequest(id="user_ada"), timeout=10).user
        assert fetched.id == "user_ada"
        assert fetched.display_name == "Ada Lovelace"
        assert fetched.primary_email_address == "Ada@Example.ORG"
        assert fetched.updated_at == ada.updated_at

        found = directory.FindUserByEmail(
            directory_pb2.FindUserByEmailRequest(email_address="ada@example.org"), timeout=10
        ).user
        assert found.id == "user_ada"


def test_list_users_pages_through_everyone_in_order(sync_service):
    with connect(sync_service.address) as channel:
        for index in range(5):
            new_user = user(f"user_{index}", f"u{index}@example.org", 1_700_000_001_000 + index)
            assert create(channel, f"msg_list_{index}", new_user) == sync_pb2.OUTCOME_APPLIED

        directory = directory_pb2_grpc.UserDirectoryServiceStub(channel)
        request = directory_pb2.ListUsersRequest(page_size=2)
        pages = []
        while True:
            page = directory.ListUsers(request, timeout=10)
            pages.append([u.id for u in page.users])
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        assert pages == [["user_0", "user_1"], ["user_2", "user_3"], ["user_4"]]


def membership(member_id: str, user_id: str, role: str, permissions: list[str], updated_at_ms: int):
    return organization_pb2.Membership(
        id=member_id,
        organization_id="org_riverside",
        user_id=user_id,
        role=role,
        role_name=role.removeprefix("org:").title(),
        permissions=permissions,
        public_user_data=organization_pb2.PublicUserData(user_id=user_id, first_name="Ada"),
        created_at=timestamp(1_700_000_000_000),
        updated_at=timestamp(updated_at_ms),
    )


def test_memberships_are_listed_and_permissions_checked(sync_service):
    with connect(sync_service.address) as channel:
        writer = organization_pb2_grpc.OrganizationSyncServiceStub(channel)
        directory = organization_pb2_grpc.OrganizationDirectoryServiceStub(channel)

        def apply(event_id: str, **event) -> int:
            meta = sync_pb2.EventMeta(event_id=event_id, occurred_at=timestamp(1_700_000_009_000))
            (kind, message), = event.items()
            message.meta.CopyFrom(meta)
            request = organization_pb2.ApplyOrganizationEventRequest(**{kind: message})
            return writer.ApplyOrganizationEvent(request, timeout=10).outcome

        organization = organization_pb2.Organization(
            id="org_riverside",
            name="Riverside Music",
            slug="riverside-music",
            created_at=timestamp(1_700_000_000_000),
            updated_at=timestamp(1_700_000_000_000),
        )
        assert apply(
            "msg_py_org", organization_upserted=organization_pb2.OrganizationUpserted(organization=organization)
        ) == sync_pb2.OUTCOME_APPLIED
        teacher = membership("orgmem_ada", "user_ada", "org:teacher", ["org:courses:publish"], 1_700_000_001_000)
        student = membership("orgmem_bob", "user_bob", "org:student", [], 1_700_000_001_000)
        for event_id, member in (("msg_py_m1", teacher), ("msg_py_m2", student)):
            upserted = organization_pb2.MembershipUpserted(membership=member)
            assert apply(event_id, membership_upserted=upserted) == sync_pb2.OUTCOME_APPLIED

        listed = directory.ListMemberships(
            organization_pb2.ListMembershipsRequest(organization_id="org_riverside", page_size=1),
            timeout=10,
        )
        assert [m.user_id for m in listed.memberships] == ["user_ada"]
        rest = directory.ListMemberships(
            organization_pb2.ListMembershipsRequest(
                organization_id="org_riverside", page_size=1, page_token=listed.next_page_token
            ),
            timeout=10,
        )
        assert [(m.user_id, m.role) for m in rest.memberships] == [("user_bob", "org:student")]
        assert rest.next_page_token == ""
        teachers = directory.ListMemberships(
            organization_pb2.ListMembershipsRequest(organization_id="org_riverside", role="org:teacher"),
            timeout=10,
        )
        assert [m.permissions for m in teachers.memberships] == [["org:courses:publish"]]

        def check(user_id: str):
            return directory.CheckPermission(
                organization_pb2.CheckPermissionRequest(
                    user_id=user_id, organization_id="org_riverside", permission="org:courses:publish"
                ),
                timeout=10,
            )

        allowed = check("user_ada")
        assert (allowed.allowed, allowed.role) == (True, "org:teacher")
        denied = check("user_bob")
        assert (denied.allowed, denied.reason) == (False, organization_pb2.DENIAL_REASON_ROLE_LACKS_PERMISSION)
        assert check("user_nobody").reason == organization_pb2.DENIAL_REASON_NO_MEMBERSHIP
        ended = organization_pb2.MembershipDeleted(membership=teacher)
        assert apply("msg_py_m1_del", membership_deleted=ended) == sync_pb2.OUTCOME_APPLIED
        assert check("user_ada").reason == organization_pb2.DENIAL_REASON_NO_MEMBERSHIP

        with pytest.raises(grpc.RpcError) as error:
            directory.CheckPermission(
                organization_pb2.CheckPermissionRequest(user_id="user_ada", organization_id="org_riverside"),
                timeout=10,
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "permission" in error.value.details()


def test_errors_carry_their_grpc_codes(sync_service):
    with connect(sync_service.address) as channel:
        directory = directory_pb2_grpc.UserDirectoryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            directory.GetUser(directory_pb2.GetUserRequest(id="user_nobody"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as invalid:
            directory.ListUsers(directory_pb2.ListUsersRequest(page_size=5000), timeout=10)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_size" in invalid.value.details()


def run_example(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLIENT_ROOT / "example.py"), "--address", address, *args],
        cwd=CLIENT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_example_script_gets_finds_and_lists_users(sync_service):
    with connect(sync_service.address) as channel:
        create(channel, "msg_ex_1", user("user_grace", "grace@example.org", 1_700_000_002_000, "Grace"))
        create(channel, "msg_ex_2", user("user_alan", "alan@example.org", 1_700_000_003_000, "Alan"))

    got = run_example(sync_service.address, "get", "user_grace")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["displayName"] == "Grace Lovelace"

    found = run_example(sync_service.address, "find", "ALAN@example.org")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["id"] == "user_alan"

    listed = run_example(sync_service.address, "list", "--page-size", "1")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == ["user_grace", "user_alan"]

    since = run_example(sync_service.address, "list", "--changed-since", "2023-11-14T22:13:23+00:00")
    assert since.returncode == 0, since.stderr
    assert [json.loads(line)["id"] for line in since.stdout.splitlines()] == ["user_alan"]

    missing = run_example(sync_service.address, "get", "user_nobody")
    assert missing.returncode == 1
    assert missing.stderr.startswith("NOT_FOUND: ")


def test_tls_and_tokens_decide_who_reads_and_who_writes(secure_sync_service, tls_files):
    address = secure_sync_service.address
    ca_file = tls_files / "ca.pem"
    with connect(address, token=WRITE_TOKEN, ca_file=ca_file) as writer:
        assert create(writer, "msg_tls_1", user("user_tls", "tls@example.org", 1_700_000_004_000)) == (
            sync_pb2.OUTCOME_APPLIED
        )

    with connect(address, token=READ_TOKEN, ca_file=ca_file) as reader:
        directory = directory_pb2_grpc.UserDirectoryServiceStub(reader)
        got = directory.GetUser(directory_pb2.GetUserRequest(id="user_tls"), timeout=10).user
        assert got.id == "user_tls"
        with pytest.raises(grpc.RpcError) as refused:
            create(reader, "msg_tls_2", user("user_tls2", "tls2@example.org", 1_700_000_004_000))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    with connect(address, ca_file=ca_file) as anonymous:
        directory = directory_pb2_grpc.UserDirectoryServiceStub(anonymous)
        with pytest.raises(grpc.RpcError) as unauthenticated:
            directory.GetUser(directory_pb2.GetUserRequest(id="user_tls"), timeout=10)
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # The example, with the token from the environment and the CA file.
    example = subprocess.run(
        [sys.executable, str(CLIENT_ROOT / "example.py"), "--address", address,
         "--ca-file", str(ca_file), "get", "user_tls"],
        cwd=CLIENT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CLERK_SYNC_TOKEN": READ_TOKEN},
    )
    assert example.returncode == 0, example.stderr
    assert json.loads(example.stdout)["id"] == "user_tls"


def test_bearer_token_travels_as_authorization_metadata():
    seen = []

    def continuation(details, request):
        seen.append((details.method, list(details.metadata)))
        return "answer"

    interceptor = BearerToken("s3cret")

    class Details:
        method = "/clerk.sync.v1.UserDirectoryService/GetUser"
        timeout = 5.0
        metadata = [("x-request-id", "abc")]
        credentials = None
        wait_for_ready = None
        compression = None

    assert interceptor.intercept_unary_unary(continuation, Details(), object()) == "answer"
    assert seen == [
        (Details.method, [("x-request-id", "abc"), ("authorization", "Bearer s3cret")])
    ]
    assert "s3cret" not in repr(interceptor)
