"""Private networking (stack setting `privateNetworking`, on in prod): one virtual network with
a subnet for the Function App's VNet integration (delegated to Microsoft.App/environments, as
Flex Consumption requires) and a subnet for private endpoints; private DNS zones linked to the
VNet so that the app resolves each service's usual host name to its private address.

Shapes follow Microsoft's Flex Consumption sample with `vnetEnabled`
(Azure-Samples/functions-quickstart-python-http-azd: infra/app/vnet.bicep,
infra/app/storage-PrivateEndpoint.bicep) and Learn, "Azure Private Endpoint private DNS zone
values" for the zone names and group ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import network, privatedns

from .config import StackConfig

FUNCTIONS_SUBNET = "functions"
ENDPOINTS_SUBNET = "private-endpoints"


@dataclass(frozen=True)
class Service:
    """A private link target: its group id and its private DNS zone."""
    group_id: str
    zone: str


BLOB = Service("blob", "privatelink.blob.core.windows.net")
TABLE = Service("table", "privatelink.table.core.windows.net")
EVENT_HUBS = Service("namespace", "privatelink.servicebus.windows.net")
POSTGRES = Service("postgresqlServer", "privatelink.postgres.database.azure.com")
SERVICES = (BLOB, TABLE, EVENT_HUBS, POSTGRES)


class PrivateNetwork(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, resource_group: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:PrivateNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.resource_group = resource_group
        self.location = cfg.location
        functions_prefix, endpoints_prefix = cfg.subnets
        # Subnets inline: a VirtualNetwork declared without them would remove separately declared subnets on
        # its next update (azure-native's documented caveat for network.VirtualNetwork).
        self.vnet = network.VirtualNetwork(
            f"{name}-vnet", virtual_network_name=f"{cfg.prefix}-vnet", resource_group_name=resource_group,
            location=cfg.location, address_space=network.AddressSpaceArgs(address_prefixes=[cfg.vnet_address_space]),
            subnets=[
                network.SubnetArgs(
                    name=FUNCTIONS_SUBNET, address_prefix=functions_prefix,
                    delegations=[network.DelegationArgs(name="flex-consumption",
                                                        service_name="Microsoft.App/environments")]),
                network.SubnetArgs(name=ENDPOINTS_SUBNET, address_prefix=endpoints_prefix,
                                   private_endpoint_network_policies="Disabled"),
            ],
            tags={"stack": cfg.stack}, opts=child)
        self.functions_subnet_id = self.vnet.id.apply(lambda i: f"{i}/subnets/{FUNCTIONS_SUBNET}")
        self.endpoints_subnet_id = self.vnet.id.apply(lambda i: f"{i}/subnets/{ENDPOINTS_SUBNET}")
        self.zones: dict[str, privatedns.PrivateZone] = {}
        self.links: list[privatedns.VirtualNetworkLink] = []
        for service in SERVICES:
            label = service.zone.split(".")[1]           # blob, table, servicebus, postgres
            zone = privatedns.PrivateZone(f"{name}-zone-{label}", private_zone_name=service.zone,
                                          resource_group_name=resource_group, location="global",
                                          tags={"stack": cfg.stack}, opts=child)
            self.zones[service.zone] = zone
            self.links.append(privatedns.VirtualNetworkLink(
                f"{name}-link-{label}", virtual_network_link_name=f"{cfg.prefix}-{label}",
                private_zone_name=zone.name, resource_group_name=resource_group, location="global",
                virtual_network=privatedns.SubResourceArgs(id=self.vnet.id), registration_enabled=False,
                opts=child))
        self.endpoints: list[network.PrivateEndpoint] = []
        self.zone_groups: list[network.PrivateDnsZoneGroup] = []
        self.register_outputs({"vnet": self.vnet.name})

    def endpoint(self, label: str, target_id: pulumi.Input[str], service: Service,
                 depends_on: list[pulumi.Resource] | None = None) -> network.PrivateEndpoint:
        """A private endpoint for one service of a resource, with its A record in the linked zone."""
        child = pulumi.ResourceOptions(parent=self, depends_on=depends_on or [])
        endpoint = network.PrivateEndpoint(
            f"pe-{label}", resource_group_name=self.resource_group, location=self.location,
            subnet=network.SubnetArgs(id=self.endpoints_subnet_id),
            private_link_service_connections=[network.PrivateLinkServiceConnectionArgs(
                name=label, private_link_service_id=target_id, group_ids=[service.group_id])],
            opts=child)
        self.endpoints.append(endpoint)
        self.zone_groups.append(network.PrivateDnsZoneGroup(
            f"pe-{label}-dns", private_dns_zone_group_name="default", private_endpoint_name=endpoint.name,
            resource_group_name=self.resource_group,
            private_dns_zone_configs=[network.PrivateDnsZoneConfigArgs(
                name=service.zone.replace(".", "-"), private_dns_zone_id=self.zones[service.zone].id)],
            opts=pulumi.ResourceOptions(parent=self)))
        return endpoint
