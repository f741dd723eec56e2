"""Event Hubs: namespace (Standard, auto-inflate; private in private stacks), the transactions hub,
the function's consumer group."""

from __future__ import annotations

import pulumi
from pulumi_azure_native import eventhub

from .config import StackConfig

HUB_NAME = "transactions"
CONSUMER_GROUP = "txmetrics"


class EventHubs(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, resource_group: pulumi.Input[str],
                 namespace_name: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:EventHubs", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        inflate = cfg.eventhub_max_throughput_units > 0
        self.namespace = eventhub.Namespace(
            f"{name}-ns", namespace_name=namespace_name, resource_group_name=resource_group, location=cfg.location,
            sku=eventhub.SkuArgs(name="Standard", tier="Standard", capacity=cfg.eventhub_throughput_units),
            is_auto_inflate_enabled=inflate,
            maximum_throughput_units=cfg.eventhub_max_throughput_units if inflate else None,
            disable_local_auth=True,            # Entra ID only: no SAS keys to leak
            minimum_tls_version="1.2",
            # private stacks: producers and the function reach it through the VNet (private endpoint) only
            public_network_access="Disabled" if cfg.private_networking else "Enabled",
            tags={"stack": cfg.stack},
            # with auto-inflate, Azure raises the throughput units under load and `pulumi refresh` copies
            # them into the inputs (pulumi-azure-native#280): the next `up` would set them back to
            # eventhubThroughputUnits at once, throttling producers mid-peak (auto-inflate never scales down)
            opts=pulumi.ResourceOptions(parent=self, protect=cfg.protect_data,
                                        ignore_changes=["sku.capacity"] if inflate else None))
        self.hub = eventhub.EventHub(
            f"{name}-hub", event_hub_name=HUB_NAME, resource_group_name=resource_group,
            namespace_name=self.namespace.name, partition_count=cfg.eventhub_partitions,
            message_retention_in_days=cfg.eventhub_retention_days,
            # the partition count is fixed at creation below Premium (Learn, "Configure properties for an
            # event hub"): the provider would send an update Azure refuses mid-`up`; a later change is left
            opts=pulumi.ResourceOptions(parent=self, protect=cfg.protect_data, ignore_changes=["partitionCount"]))
        self.consumer_group = eventhub.ConsumerGroup(
            f"{name}-cg", consumer_group_name=CONSUMER_GROUP, resource_group_name=resource_group,
            namespace_name=self.namespace.name, event_hub_name=self.hub.name, opts=child)
        self.fully_qualified_namespace = self.namespace.name.apply(lambda n: f"{n}.servicebus.windows.net")
        self.register_outputs({"namespace": self.namespace.name, "hub": self.hub.name,
                               "consumer_group": self.consumer_group.name})
