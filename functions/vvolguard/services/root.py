"""The composition root: everything vvolguard needs, built once from settings (docs/architecture.md).

``Services.build(settings)`` binds the PynamoDB models to the settings' tables, region and endpoint (the one
place that does) and hands out each service and adapter, each constructed once, on first use: a Lambda
container, the CLI, the dashboard (``app.extensions["vvg"]``) and the local stack each hold one ``Services``.
Construction is lazy so that the event handler imports only the event path (its cold start), and the CLI
only the command it runs.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from vvolguard.settings import Settings

if TYPE_CHECKING:  # the imports are deferred to first use (cold start)
    from vvolguard.adapters.audit import AuditLog
    from vvolguard.adapters.checkpoints import CheckpointStore
    from vvolguard.adapters.provider import EbsProvider
    from vvolguard.services.events import EventService
    from vvolguard.services.hosts import HostService
    from vvolguard.services.impact import ImpactService
    from vvolguard.services.keys import KeyService
    from vvolguard.services.policies import PolicyService
    from vvolguard.services.preflight import PreflightService
    from vvolguard.services.quarantine import QuarantineService
    from vvolguard.services.reconcile import Reconciler
    from vvolguard.services.simulate import Simulator
    from vvolguard.services.tamper import TamperCheck
    from vvolguard.services.users import UserService
    from vvolguard.services.vms import Ec2Lifecycle, VmService

_build_lock = threading.Lock()


class Services:
    """One process's services and adapters, sharing one storage provider (its assumed-role sessions)."""

    def __init__(self, settings: Settings, provider: Any = None) -> None:
        self.settings = settings
        self._provider = provider
        self._lock = threading.RLock()

    @classmethod
    def build(cls, settings: Settings | None = None, provider: Any = None) -> "Services":
        """Bind the models to ``settings`` (default: from the environment) and return the root.
        ``provider`` replaces the EBS provider (tests inject a faulty one)."""
        from vvolguard.adapters.models import bind

        settings = settings or Settings.from_env()
        with _build_lock:
            bind(settings)
        return cls(settings, provider)

    def _once(self, name: str, make):
        """``make()`` once per root, also when two threads of the dashboard ask at the same time."""
        with self._lock:
            value = self.__dict__.get(name)
            if value is None:
                value = self.__dict__[name] = make()
            return value

    # ---- adapters

    @property
    def provider(self) -> "EbsProvider":
        def make():
            from vvolguard.adapters.provider import EbsProvider

            return self._provider or EbsProvider(self.settings)
        return self._once("_provider_built", make)

    @property
    def audit(self) -> "AuditLog":
        def make():
            from vvolguard.adapters.audit import AuditLog

            return AuditLog(self.settings)
        return self._once("_audit", make)

    @property
    def checkpoints(self) -> "CheckpointStore":
        def make():
            from vvolguard.adapters.checkpoints import CheckpointStore

            return CheckpointStore(self.settings)
        return self._once("_checkpoints", make)

    # ---- services

    @property
    def events(self) -> "EventService":
        def make():
            from vvolguard.services.events import EventService

            return EventService(self.settings, self.provider)
        return self._once("_events", make)

    @property
    def policies(self) -> "PolicyService":
        """Policies, with the provider (a delete detaches an attached volume first)."""
        def make():
            from vvolguard.services.policies import PolicyService

            return PolicyService(self.settings, provider=self.provider)
        return self._once("_policies", make)

    @property
    def hosts(self) -> "HostService":
        def make():
            from vvolguard.services.hosts import HostService

            return HostService(self.settings, provider=self.provider)
        return self._once("_hosts", make)

    @property
    def users(self) -> "UserService":
        def make():
            from vvolguard.services.users import UserService

            return UserService(self.settings)
        return self._once("_users", make)

    @property
    def keys(self) -> "KeyService":
        def make():
            from vvolguard.services.keys import KeyService

            return KeyService(self.settings, self.provider)
        return self._once("_keys", make)

    @property
    def quarantine(self) -> "QuarantineService":
        def make():
            from vvolguard.services.quarantine import QuarantineService

            return QuarantineService(self.settings, provider=self.provider)
        return self._once("_quarantine", make)

    @property
    def vms(self) -> "VmService":
        """EC2 VMs' start and stop (docs/ec2-vms.md), on the shared event service."""
        def make():
            from vvolguard.services.vms import VmService

            return VmService(self.settings, provider=self.provider, events=self.events)
        return self._once("_vms", make)

    @property
    def ec2_lifecycle(self) -> "Ec2Lifecycle":
        """What an EC2 instance's state means for its VM (the lifecycle function, the local poller)."""
        def make():
            from vvolguard.services.vms import Ec2Lifecycle

            return Ec2Lifecycle(self.settings, events=self.events)
        return self._once("_ec2_lifecycle", make)

    @property
    def impact(self) -> "ImpactService":
        """Replays of recorded events through a draft policy (docs/policy-impact.md); read-only."""
        def make():
            from vvolguard.services.impact import ImpactService

            return ImpactService(self.settings, policies=self.policies)
        return self._once("_impact", make)

    @property
    def preflight(self) -> "PreflightService":
        """Will this VM boot? (docs/preflight.md)"""
        def make():
            from vvolguard.services.preflight import PreflightService

            return PreflightService(self.settings, provider=self.provider)
        return self._once("_preflight", make)

    @property
    def simulator(self) -> "Simulator":
        def make():
            from vvolguard.services.simulate import Simulator

            return Simulator(self.settings)
        return self._once("_simulator", make)

    @property
    def tamper(self) -> "TamperCheck":
        def make():
            from vvolguard.services.tamper import TamperCheck

            return TamperCheck(self.settings, self.audit)
        return self._once("_tamper", make)

    def reconciler(self) -> "Reconciler":
        """A reconciler for one pass (it caches host identities per pass), on the shared provider."""
        from vvolguard.services.reconcile import Reconciler

        return Reconciler(self.settings, self.provider, tamper=self.tamper, lifecycle=self.ec2_lifecycle)
