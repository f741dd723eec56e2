"""Storage: the data account (raw-events archive) with the lifecycle policy rendered from
lifecycle/, and the host account for the Functions host state and the deployment package.

Two accounts keep least privilege simple: the host needs Blob Data Owner on its own storage,
while the function only ever writes into the raw-events container of the data account. The
deployment container sits in the host account, which has no management policy: on Flex
Consumption the app runs from the package in it (every cold start and scale-out reads it), so
no retention rule may ever reach it (issue 12; lifecycle/policy.py refuses one anyway)."""

from __future__ import annotations

import pulumi
from pulumi_azure_native import storage

from lifecycle.policy import Policy, render_management_policy, to_snake
from txmetrics.core.naming import RAW_EVENTS_CONTAINER

from .config import StackConfig

DEPLOYMENT_CONTAINER = "deployments"


def _account(name: str, account_name: pulumi.Input[str], cfg: StackConfig, resource_group: pulumi.Input[str],
             sku: str, parent: pulumi.Resource, *, protect: bool = False) -> storage.StorageAccount:
    private = cfg.private_networking
    return storage.StorageAccount(
        name, account_name=account_name, resource_group_name=resource_group, location=cfg.location,
        kind=storage.Kind.STORAGE_V2, sku=storage.SkuArgs(name=sku), access_tier=storage.AccessTier.HOT,
        allow_blob_public_access=False, minimum_tls_version=storage.MinimumTlsVersion.TLS1_2,
        enable_https_traffic_only=True,
        allow_shared_key_access=False,          # identities only: no account keys in use anywhere
        default_to_o_auth_authentication=True,
        # private stacks: reachable through private endpoints only (as Microsoft's Flex sample with
        # vnetEnabled: publicNetworkAccess Disabled, networkAcls defaultAction Deny, bypass None)
        public_network_access=storage.PublicNetworkAccess.DISABLED if private else storage.PublicNetworkAccess.ENABLED,
        network_rule_set=storage.NetworkRuleSetArgs(
            default_action=storage.DefaultAction.DENY if private else storage.DefaultAction.ALLOW,
            bypass=storage.Bypass.NONE if private else storage.Bypass.AZURE_SERVICES),
        tags={"stack": cfg.stack}, opts=pulumi.ResourceOptions(parent=parent, protect=protect))


class Storage(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, policy: Policy, resource_group: pulumi.Input[str],
                 account_name: pulumi.Input[str], host_account_name: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.account = _account(f"{name}-data", account_name, cfg, resource_group, policy.redundancy, self,
                                protect=cfg.protect_data)        # the raw archive: the system of record
        # protect is not inherited from the account (only from a parent): each container holding data has its own
        self.containers = {
            c: storage.BlobContainer(f"{name}-{c}", container_name=c, account_name=self.account.name,
                                     resource_group_name=resource_group, public_access=storage.PublicAccess.NONE,
                                     opts=pulumi.ResourceOptions(parent=self, protect=cfg.protect_data))
            for c in policy.containers
        }
        self.raw_events = self.containers[RAW_EVENTS_CONTAINER]
        self.management_policy = storage.ManagementPolicy(
            f"{name}-lifecycle", management_policy_name="default", account_name=self.account.name,
            resource_group_name=resource_group, policy=to_snake(render_management_policy(policy)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(self.containers.values())))
        self.runtime_account = _account(f"{name}-runtime", host_account_name, cfg, resource_group, "Standard_LRS", self)
        self.deployments = storage.BlobContainer(
            f"{name}-{DEPLOYMENT_CONTAINER}", container_name=DEPLOYMENT_CONTAINER,
            account_name=self.runtime_account.name, resource_group_name=resource_group,
            public_access=storage.PublicAccess.NONE, opts=child)
        self.blob_endpoint = self.account.primary_endpoints.apply(lambda e: e.blob)
        self.runtime_blob_endpoint = self.runtime_account.primary_endpoints.apply(lambda e: e.blob)
        self.register_outputs({"account": self.account.name, "runtime_account": self.runtime_account.name})
