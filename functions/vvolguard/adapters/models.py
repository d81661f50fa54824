"""PynamoDB models of vvolguard's tables. Table *creation* is the template's job (infra/template.py);
these classes only name the attributes, and a test checks their keys against template.yaml."""
from __future__ import annotations

import os
import re

from pynamodb.attributes import (
    BooleanAttribute,
    DiscriminatorAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.connection import Connection
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection, KeysOnlyProjection
from pynamodb.models import Model

from vvolguard.settings import Settings


class _Meta:
    table_name = ""
    region = "us-east-1"
    host = None


# ---- state table: one partition per VM (its policies, their attachment state, its audit chain head)


class VolumeIndex(GlobalSecondaryIndex):
    """Find a policy by volume_id (sparse: only policy items carry volume_id)."""

    class Meta:
        index_name = "by-volume"
        projection = AllProjection()

    volume_id = UnicodeAttribute(hash_key=True)


class ExpiryIndex(GlobalSecondaryIndex):
    """What expires when: attachments' leases (shards L#0..) and migration grants (G#0..); sparse."""

    class Meta:
        index_name = "by-expiry"
        projection = AllProjection()

    expiry_shard = UnicodeAttribute(hash_key=True)
    expiry_at = UnicodeAttribute(range_key=True)


class HostPolicyIndex(GlobalSecondaryIndex):
    """Find a host's policies by host_id (revocation: docs/webhook-hardening.md); only policy items carry host_id."""

    class Meta:
        index_name = "by-host"
        projection = AllProjection()

    host_id = UnicodeAttribute(hash_key=True)


class ListingIndex(GlobalSecondaryIndex):
    """Every policy in the dashboard's order (VM, then volume, ids in natural order): one partition, so a page
    of /policies is one Query (docs/policy-pages.md); sparse: only policy items carry ``list_part``. Keys and
    ``kind`` only, so the event path's attachment updates never write to it; a page's items are read by key."""

    class Meta:
        index_name = "by-listing"
        projection = IncludeProjection(["kind"])

    list_part = UnicodeAttribute(hash_key=True)
    list_key = UnicodeAttribute(range_key=True)


class ArrayIndex(GlobalSecondaryIndex):
    """An array's policies in the dashboard's order (docs/policy-pages.md); sparse (``list_key``); keys only."""

    class Meta:
        index_name = "by-array"
        projection = IncludeProjection(["kind"])

    storage_array = UnicodeAttribute(hash_key=True)
    list_key = UnicodeAttribute(range_key=True)


# The by-listing index's one partition key value (every policy item carries it).
LISTING_PART = "POLICIES"
_DIGIT_RUN = re.compile(r"\d+")


def _natural(text: str) -> str:
    """``text`` with each digit run prefixed by its length (leading zeros dropped), so that plain string order
    is natural order: vvol-2 before vvol-11, as ``domain.natural.natural_key`` sorts."""
    def run(m: re.Match) -> str:
        digits = m.group(0).lstrip("0") or "0"
        return f"{len(digits):02d}{digits}"

    return _DIGIT_RUN.sub(run, text.casefold())


def listing_key(vm_id: str, volume_id: str) -> str:
    """The sort key of a policy in the by-listing and by-array indexes: VM, then volume, naturally ordered;
    ``#`` sorts below every id character, so a VM's volumes stay together."""
    return f"{_natural(vm_id)}#{_natural(volume_id)}#{volume_id}"


def listing_fields(vm_id: str, volume_id: str) -> dict[str, str]:
    """The index attributes every policy item carries (written with the item: PolicyService)."""
    return {"list_part": LISTING_PART, "list_key": listing_key(vm_id, volume_id)}


EXPIRY_SHARDS = 8


def expiry_shard(kind: str, key: str) -> str:
    """Spread expiring items over a few index partitions (no hot key), deterministically per item."""
    import zlib

    return f"{kind}#{zlib.crc32(key.encode()) % EXPIRY_SHARDS}"


def expiry_key(dt) -> str:
    """A sortable UTC timestamp for the expiry index."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StateItem(Model):
    """Base of every item in the state table, partitioned by ``pk`` (``VM#vm-1``, ``HOST#h``...)."""

    class Meta(_Meta):
        pass

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    kind = DiscriminatorAttribute()


class PolicyItem(StateItem, discriminator="policy"):
    """One volume's policy (docs/policy-file.md) and its attachment state; sk = ``POLICY#<volume_id>``."""

    by_volume = VolumeIndex()
    by_expiry = ExpiryIndex()
    by_host = HostPolicyIndex()
    by_listing = ListingIndex()
    by_array = ArrayIndex()

    volume_id = UnicodeAttribute()
    vm_id = UnicodeAttribute()
    host_id = UnicodeAttribute()
    storage_array = UnicodeAttribute()
    size_mb = NumberAttribute()
    attach_on = UnicodeAttribute()
    detach_on = UnicodeAttribute()
    app = UnicodeAttribute(null=True)
    authorized_apps = ListAttribute(of=UnicodeAttribute, default=list)
    os_disk_encryption = BooleanAttribute(default=False)
    password_hash = UnicodeAttribute(null=True)
    max_attach_seconds = NumberAttribute(default=900)
    min_key_bits = NumberAttribute(null=True)
    attach_to = UnicodeAttribute(null=True)  # "vm" (absent) or "host" (docs/deployment-modes.md)
    policy_version = NumberAttribute(default=1)
    updated_at = UTCDateTimeAttribute(null=True)
    updated_by = UnicodeAttribute(null=True)
    # attachment state, changed only by conditional writes on state_version
    state_version = NumberAttribute(default=0)
    attached = BooleanAttribute(default=False)
    provider_volume_id = UnicodeAttribute(null=True)
    instance_id = UnicodeAttribute(null=True)
    device = UnicodeAttribute(null=True)
    attached_at = UTCDateTimeAttribute(null=True)
    lease_expires_at = UTCDateTimeAttribute(null=True)
    last_event_at = UTCDateTimeAttribute(null=True)
    failed_passwords = NumberAttribute(default=0)
    locked_until = UTCDateTimeAttribute(null=True)
    zone = UnicodeAttribute(null=True)
    busy_event = UnicodeAttribute(null=True)
    busy_until = UTCDateTimeAttribute(null=True)
    expiry_shard = UnicodeAttribute(null=True)  # set while attached: the lease in the expiry index
    expiry_at = UnicodeAttribute(null=True)
    # The disk_encryption products of the VM's latest guest.inventory, "NAME:KEY_BITS" strongest first (names
    # never hold a colon), written with the select's audit records; absent: the VM never sent one. An attach of
    # a volume with min_key_bits is decided against them (docs/guest-channel.md). Not a secret.
    inventory = ListAttribute(of=UnicodeAttribute, null=True)
    inventory_at = UTCDateTimeAttribute(null=True)
    # The dashboard's paged listing (by-listing and by-array indexes, docs/policy-pages.md): listing_fields().
    list_part = UnicodeAttribute(null=True)
    list_key = UnicodeAttribute(null=True)

    @classmethod
    def detached_actions(cls, clear_busy: bool = False) -> list:
        """The update that records the volume as detached (lease out of the expiry index, state version up),
        as the reconciler, a quarantine and a host revocation write it; ``clear_busy`` also ends an event's
        claim on the volume."""
        actions = [cls.attached.set(False), cls.device.remove(), cls.attached_at.remove(),
                   cls.lease_expires_at.remove(), cls.expiry_shard.remove(), cls.expiry_at.remove()]
        if clear_busy:
            actions += [cls.busy_event.remove(), cls.busy_until.remove()]
        return actions + [cls.state_version.add(1)]


class GrantItem(StateItem, discriminator="grant"):
    """A live-migration grant (sk = ``GRANT#<destination>``): the destination may use the VM's volumes."""

    by_expiry = ExpiryIndex()

    vm_id = UnicodeAttribute()
    source_host = UnicodeAttribute()
    destination_host = UnicodeAttribute()
    event_id = UnicodeAttribute()
    granted_at = UTCDateTimeAttribute()
    expires_at = UTCDateTimeAttribute()
    expiry_shard = UnicodeAttribute()
    expiry_at = UnicodeAttribute()


QUARANTINE_SK = "QUARANTINE"


class QuarantineItem(StateItem, discriminator="quarantine"):
    """Break-glass (sk = ``QUARANTINE``): while it exists every attach for the VM is refused
    (docs/break-glass.md); read with the VM's partition, checked in every claim that attaches."""

    vm_id = UnicodeAttribute()
    reason = UnicodeAttribute(null=True)
    actor = UnicodeAttribute()
    since = UTCDateTimeAttribute()


class RefusalItem(StateItem, discriminator="refusals"):
    """Webhook requests refused before they authenticated, counted per named (enrolled) host and minute
    (pk ``HOST#<id>``, sk ``REFUSED#<minute>``, moved by atomic ADDs); the reconciler folds each closed window
    into one audit record and deletes the item. ``named_host``, not ``host_id``: it stays out of by-host."""

    by_expiry = ExpiryIndex()

    named_host = UnicodeAttribute()
    window = UnicodeAttribute()
    refusals = NumberAttribute(default=0)
    codes = UnicodeSetAttribute(null=True)
    expiry_shard = UnicodeAttribute()  # R#n, expiry_at = the end of the window
    expiry_at = UnicodeAttribute()


class ClaimItem(StateItem, discriminator="claim"):
    """An event's claim while its provider work runs (pk ``VM#<vm>``, sk ``CLAIM#<host>/<event_id>``), written
    with the claim and deleted with the event's records (or its release): in the expiry index under ``C#n``
    at the claim's lease end, so the reconciler finds the claims of a process that died (docs/crash-safety.md)."""

    by_expiry = ExpiryIndex()

    event_key = UnicodeAttribute()  # the events table's id: host/event_id
    expiry_shard = UnicodeAttribute()
    expiry_at = UnicodeAttribute()


class AlertItem(StateItem, discriminator="alert"):
    """One security alert (docs/alerts.md): pk ``ALERTS#<day>``, sk ``<at>#<random>``, so a day's alerts are
    one Query, newest first. The ids are ``a_*`` (not ``vm_id``...): alerts stay out of the state indexes.
    DynamoDB's TTL removes it at ``purge_at`` (epoch seconds, 90 days on)."""

    at = UnicodeAttribute()
    alert_kind = UnicodeAttribute()
    severity = UnicodeAttribute()
    a_vm = UnicodeAttribute(null=True)
    a_volume = UnicodeAttribute(null=True)
    a_host = UnicodeAttribute(null=True)
    detail = UnicodeAttribute(null=True)
    audit_ref = UnicodeAttribute(null=True)
    published = BooleanAttribute(default=False)
    purge_at = NumberAttribute()


class AlertKeyItem(StateItem, discriminator="alertkey"):
    """At most one alert per kind and subject in 5 minutes: pk ``ALERTKEY#<kind>#<subject>``, sk ``ALERTKEY``,
    put only when absent or past ``until`` (one conditional write, the same in every container)."""

    until = NumberAttribute()
    purge_at = NumberAttribute()


class SigFailItem(StateItem, discriminator="sigfail"):
    """Bad signatures naming one host in one minute (pk ``HOST#<id>``, sk ``SIGFAIL#<minute>``), moved by an
    atomic ADD in the same transaction that counts the refusal (so a never-enrolled name writes nothing);
    the reconciler sums the last 5 minutes per host (docs/alerts.md). In the expiry index under ``S#n``
    with ``expiry_at`` = the minute's start; DynamoDB's TTL removes it at ``purge_at``."""

    by_expiry = ExpiryIndex()

    named_host = UnicodeAttribute()
    n = NumberAttribute(default=0)
    expiry_shard = UnicodeAttribute()
    expiry_at = UnicodeAttribute()
    purge_at = NumberAttribute()


TAMPER_PK = "AUDITCHECK"


class TamperCheckItem(StateItem, discriminator="tampercheck"):
    """The scheduled tamper check's last result and the latest request for a run (pk = sk = ``AUDITCHECK``;
    docs/audit-check.md). ``checked_at`` is when the last check started: a ``requested_at`` after it is a
    request still to run. ``problems_json`` holds the first problems (chain, seq, problem: no record data)."""

    checked_at = UTCDateTimeAttribute(null=True)
    took_ms = NumberAttribute(null=True)
    ok = BooleanAttribute(null=True)
    records = NumberAttribute(null=True)
    chains = NumberAttribute(null=True)
    problems_json = UnicodeAttribute(null=True)
    checkpoint_at = UnicodeAttribute(null=True)  # the signed checkpoint the check compared the heads with
    checkpoint_chains = NumberAttribute(null=True)
    error = UnicodeAttribute(null=True)
    source = UnicodeAttribute(null=True)
    requested_at = UTCDateTimeAttribute(null=True)
    requested_by = UnicodeAttribute(null=True)


class ChainHead(StateItem, discriminator="head"):
    """The head of one audit chain (sk = ``~AUDIT``): the last sequence number and its MAC."""

    head_seq = NumberAttribute(default=0)
    head_mac = UnicodeAttribute(default="")
    head_tag = UnicodeAttribute(default="")  # HMAC over (chain, seq, mac): a rolled-back head does not verify


class KeyVolumeItem(StateItem, discriminator="keyvol"):
    """What was provisioned on a volume (docs/key-volume.md): pk ``KEYVOL#<volume_id>``, sk ``KEYVOL``.

    Its own partition (not the VM's), so the event path never reads it. Entries hold names, kinds, sizes
    and digests only; the escrow holds KMS ciphertexts bound to the volume id, never plaintext."""

    kv_volume_id = UnicodeAttribute()  # not ``volume_id``: the by-volume index is for policies only
    kv_vm_id = UnicodeAttribute()
    provider_volume_id = UnicodeAttribute()
    provisioned_at = UTCDateTimeAttribute()
    provisioned_by = UnicodeAttribute(null=True)
    entries_json = UnicodeAttribute()
    escrow_json = UnicodeAttribute(null=True)


# ---- hosts, users, events


# The by-listing indexes of the hosts and users tables (docs/host-user-pages.md): one partition each, in id
# order, holding keys only, so /hosts and /users read a page with one Query and one BatchGetItem, whatever
# else the table holds (the users table also holds the sign-in limit counters, which never carry it).
HOSTS_PART = "HOSTS"
USERS_PART = "USERS"


class HostListingIndex(GlobalSecondaryIndex):
    """Every host in id order (sparse: only host items carry ``list_part``); keys only."""

    class Meta:
        index_name = "by-listing"
        projection = KeysOnlyProjection()

    list_part = UnicodeAttribute(hash_key=True)
    host_id = UnicodeAttribute(range_key=True)


class UserListingIndex(GlobalSecondaryIndex):
    """Every user in name order (sparse: only user items carry ``list_part``, never a limit counter); keys only."""

    class Meta:
        index_name = "by-listing"
        projection = KeysOnlyProjection()

    list_part = UnicodeAttribute(hash_key=True)
    username = UnicodeAttribute(range_key=True)


class HostItem(Model):
    """An enrolled host: hashed hardware credentials and its webhook secret, encrypted with KMS; or, for a
    key host (docs/host-keys.md), only its Ed25519 public key, bound to the hardware it was enrolled with."""

    class Meta(_Meta):
        pass

    by_listing = HostListingIndex()

    host_id = UnicodeAttribute(hash_key=True)
    cred_salt = UnicodeAttribute()
    cred_hash = UnicodeAttribute()
    secret_enc = UnicodeAttribute(null=True)  # secret hosts only
    secret_version = NumberAttribute(default=1)  # the credential's version: a rotated secret or key moves it
    status = UnicodeAttribute(default="active")
    enrolled_at = UTCDateTimeAttribute()
    updated_at = UTCDateTimeAttribute()
    last_seen_at = UTCDateTimeAttribute(null=True)
    # key hosts: auth == "ed25519", the public key (base64 of its 32 bytes), its SHA256 fingerprint, and the
    # hardware credentials given with it (not secrets: shown so an operator sees which machine a key is),
    # bound to the key by key_binding (domain/hostkeys.binding). Absent auth means "hmac".
    auth = UnicodeAttribute(null=True)
    public_key = UnicodeAttribute(null=True)
    fingerprint = UnicodeAttribute(null=True)
    hw_mac = UnicodeAttribute(null=True)
    hw_serial = UnicodeAttribute(null=True)
    hw_text = UnicodeAttribute(null=True)
    key_binding = UnicodeAttribute(null=True)
    list_part = UnicodeAttribute(null=True)  # HOSTS_PART: the by-listing index (set by every write of HostService)


class UserItem(Model):
    """A dashboard user: a salted password hash, a role, and the user's live dashboard sessions.

    ``sessions`` maps a digest of each session id to its expiry (epoch seconds): the one read a request
    makes of its user also says whether its session still holds, so ending a session anywhere (sign-out,
    a password or role change, disabling) is one write that every process and container sees at once."""

    class Meta(_Meta):
        pass

    by_listing = UserListingIndex()

    username = UnicodeAttribute(hash_key=True)
    password_hash = UnicodeAttribute()
    role = UnicodeAttribute()
    created_at = UTCDateTimeAttribute()
    disabled = BooleanAttribute(default=False)
    last_login = UTCDateTimeAttribute(null=True)
    sessions = MapAttribute(null=True)
    list_part = UnicodeAttribute(null=True)  # USERS_PART: the by-listing index (set by every write of UserService)


class LimitItem(Model):
    """A shared sign-in / guess limit counter, in the users table under a key no user name can take
    (``#...``); DynamoDB's TTL removes it at ``expires_at`` (epoch seconds)."""

    class Meta(_Meta):
        pass

    key = UnicodeAttribute(hash_key=True, attr_name="username")
    v = NumberAttribute(default=0)  # version, for compare-and-set
    count = NumberAttribute(default=0)
    last_at = NumberAttribute(default=0)
    owner = UnicodeAttribute(null=True)
    expires_at = NumberAttribute()


class EventItem(Model):
    """An event's idempotency record: a keyed MAC of the body (and, for a body with a password, a salted
    scrypt tag of it: vvolguard.domain.fingerprint), its status and its stored answer."""

    class Meta(_Meta):
        pass

    event_id = UnicodeAttribute(hash_key=True)
    body_mac = UnicodeAttribute()
    password_tag = UnicodeAttribute(null=True)
    host_id = UnicodeAttribute()
    status = UnicodeAttribute()
    response = UnicodeAttribute(null=True)
    lease_until = NumberAttribute(null=True)
    expires_at = NumberAttribute(null=True)


# ---- audit


class AuditByTime(GlobalSecondaryIndex):
    """All chains' records, newest first within a month."""

    class Meta:
        index_name = "by-time"
        projection = AllProjection()

    month = UnicodeAttribute(hash_key=True)
    at_key = UnicodeAttribute(range_key=True)


class AuditByVolume(GlobalSecondaryIndex):
    """One volume's records, newest first."""

    class Meta:
        index_name = "by-volume"
        projection = AllProjection()

    volume_id = UnicodeAttribute(hash_key=True)
    at_key = UnicodeAttribute(range_key=True)


class AuditItem(Model):
    """One audit record in a keyed hash chain (``chain``, ``seq``)."""

    class Meta(_Meta):
        pass

    by_time = AuditByTime()
    by_volume = AuditByVolume()

    chain = UnicodeAttribute(hash_key=True)
    seq = NumberAttribute(range_key=True)
    month = UnicodeAttribute()
    at_key = UnicodeAttribute()
    at = UnicodeAttribute()
    actor = UnicodeAttribute()
    vm_id = UnicodeAttribute(null=True)
    volume_id = UnicodeAttribute(null=True)
    host_id = UnicodeAttribute(null=True)
    event_id = UnicodeAttribute(null=True)
    event_type = UnicodeAttribute(null=True)
    action = UnicodeAttribute()
    outcome = UnicodeAttribute()
    reason = UnicodeAttribute(null=True)
    policy_version = NumberAttribute(null=True)
    detail = MapAttribute(null=True)
    prev = UnicodeAttribute()
    mac = UnicodeAttribute()
    v = NumberAttribute(null=True)  # MAC format: 2 covers every stored attribute; absent: the first format
    # Format 3: what the policy-impact replay needs of a host event (docs/policy-impact.md); never a password.
    occurred_at = UnicodeAttribute(null=True)
    app = UnicodeAttribute(null=True)
    destination_host = UnicodeAttribute(null=True)
    source_host = UnicodeAttribute(null=True)
    apps = UnicodeAttribute(null=True)
    password_verdict = UnicodeAttribute(null=True)


MODELS_BY_SETTING = {
    "state_table": StateItem,
    "hosts_table": HostItem,
    "users_table": UserItem,
    "events_table": EventItem,
    "audit_table": AuditItem,
}


def endpoint_url(service: str = "dynamodb") -> str | None:
    """The endpoint override of the standard AWS environment, if any."""
    return os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL") or None


_shared_session = None
# Since the last bind(): one botocore client per (service, region, endpoint, options), shared by every
# model's PynamoDB connection (12 of them) instead of one each; building a client costs ~20 ms.
_model_clients: dict[str, object] = {}


def _client_key(args: tuple, kwargs: dict) -> str:
    cfg = kwargs.get("config")
    options = sorted(getattr(cfg, "_user_provided_options", {}).items()) if cfg is not None else None
    return repr((args, sorted((k, v) for k, v in kwargs.items() if k != "config"), options))


def _share_botocore_session() -> None:
    """PynamoDB builds a botocore session (and re-reads botocore's data files) per connection; one
    process-wide session keeps cold starts and CLI runs short. Clients are created eagerly in
    bind(), on one thread, because botocore's client creation is not thread-safe."""
    global _shared_session
    import botocore.session
    import pynamodb.connection.base as base

    if _shared_session is None:
        from vvolguard.adapters.aws import shared_loader, track

        shared = botocore.session.get_session()
        shared.register_component("data_loader", shared_loader())
        create = shared.create_client

        def create_tracked(*args, **kwargs):  # PynamoDB may rebuild a client; it stays under the hooks
            key = _client_key(args, kwargs)
            client = _model_clients.get(key)
            signer = getattr(client, "_request_signer", None)
            if client is None or (signer is not None and not signer._credentials):  # PynamoDB's own rebuild rule
                client = _model_clients[key] = track(create(*args, **kwargs))
            return client

        shared.create_client = create_tracked  # type: ignore[method-assign]
        _shared_session = shared
        base.get_session = lambda: _shared_session


_bound: tuple | None = None


def _table_models() -> list[type[Model]]:
    """Every model class that reads or writes a table: the table roots and each discriminated subclass."""
    out: list[type[Model]] = []
    todo: list[type[Model]] = [*MODELS_BY_SETTING.values(), LimitItem]
    while todo:
        model = todo.pop()
        out.append(model)
        todo.extend(model.__subclasses__())
    return out


def bind(settings: Settings) -> None:
    """Point the models at the tables, region and endpoint of ``settings``: called by the composition root
    only (vvolguard.services.root.Services.build), once per process and settings (again only when they
    change, as tests do between emulations).

    PynamoDB reads a model's table from its ``Meta`` (its documented configuration), so the one binding per
    process is written there; a model keeps its connection until its table name changes, so the cached
    connections are dropped here when the binding changes (PynamoDB registers a hook on its client for each
    new connection: the same binding again keeps them all)."""
    global _bound
    _share_botocore_session()
    host = endpoint_url()
    key = (settings.region, host, *(getattr(settings, attr) for attr in MODELS_BY_SETTING))
    tables = {**{model: getattr(settings, attr) for attr, model in MODELS_BY_SETTING.items()},
              LimitItem: settings.users_table}
    for model, table in tables.items():
        model.Meta.table_name, model.Meta.region, model.Meta.host = table, settings.region, host
    if key == _bound:  # the same binding again (a test's next emulation): connections and clients stay
        return
    _model_clients.clear()
    _connections.clear()
    for model in _table_models():
        model._connection = None
    _bound = key
    track_model_clients()


def bound() -> bool:
    """Whether bind() ran in this process."""
    return _bound is not None


_connections: dict[tuple[str, str | None], Connection] = {}


def connection(settings: Settings) -> Connection:
    """The shared PynamoDB connection for transactions (one botocore client per process, not per call)."""
    key = (settings.region, endpoint_url())
    conn = _connections.get(key)
    if conn is None:
        conn = Connection(region=settings.region, host=key[1])
        from vvolguard.adapters.aws import track

        track(conn.client)
        _connections[key] = conn
    return conn


def track_model_clients() -> None:
    """Put the models' own botocore clients under the registered hooks (created on first use)."""
    from vvolguard.adapters.aws import track

    for model in _table_models():
        track(model._get_connection().connection.client)
