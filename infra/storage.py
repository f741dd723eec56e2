"""Storage: the data account (raw-events archive, deployment packages) with the lifecycle
policy rendered from lifecycle/, and a small runtime account for the Functions host state.

Two accounts keep least privilege simple: the host needs Blob Data Owner on its own
storage, while the function only ever writes into the raw-events container of the data
account."""

from __future__ import annotations

import pulumi
from pulumi_azure_native import storage

from lifecycle.policy import Policy, render_management_policy, to_snake

from .config import StackConfig

RAW_EVENTS_CONTAINER = "raw-events"
DEPLOYMENT_CONTAINER = "deployments"


def _account(name: str, account_name: str, cfg: StackConfig, resource_group: pulumi.Input[str], sku: str,
             parent: pulumi.Resource) -> storage.StorageAccount:
    return storage.StorageAccount(
        name, account_name=account_name, resource_group_name=resource_group, location=cfg.location,
        kind="StorageV2", sku=storage.SkuArgs(name=sku), access_tier="Hot",
        allow_blob_public_access=False, minimum_tls_version="TLS1_2", enable_https_traffic_only=True,
        allow_shared_key_access=False,          # identities only: no account keys in use anywhere
        default_to_o_auth_authentication=True,
        tags={"stack": cfg.stack}, opts=pulumi.ResourceOptions(parent=parent))


class Storage(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, policy: Policy, resource_group: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.account = _account(f"{name}-data", f"{cfg.compact}data", cfg, resource_group, policy.redundancy, self)
        self.containers = {
            c: storage.BlobContainer(f"{name}-{c}", container_name=c, account_name=self.account.name,
                                     resource_group_name=resource_group, public_access="None", opts=child)
            for c in policy.containers
        }
        self.raw_events = self.containers[RAW_EVENTS_CONTAINER]
        self.deployments = self.containers[DEPLOYMENT_CONTAINER]
        self.management_policy = storage.ManagementPolicy(
            f"{name}-lifecycle", management_policy_name="default", account_name=self.account.name,
            resource_group_name=resource_group, policy=to_snake(render_management_policy(policy)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(self.containers.values())))
        self.runtime_account = _account(f"{name}-runtime", f"{cfg.compact}rt", cfg, resource_group,
                                        "Standard_LRS", self)
        self.blob_endpoint = self.account.primary_endpoints.apply(lambda e: e.blob)
        self.register_outputs({"account": self.account.name, "runtime_account": self.runtime_account.name})
