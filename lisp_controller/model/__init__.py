"""The LISP data model: plain, validated values and the map-cache
(docs/architecture.rst). Every other layer imports the model from here."""
from lisp_controller.model.values import (
    IPAddress, IID_MAX, PRIORITY_UNUSED, ACTIONS, ModelError, parse_iid, parse_address,
    Prefix, parse_prefix, as_prefix, parse_mac, parse_int, parse_gateway, parse_bool,
    parse_action, parse_decimal, parse_rloc_address, parse_host_address, parse_interface_name,
    unique_keys, IFNAMSIZ)
from lisp_controller.model.mapping import (
    Rloc, Mapping, Endpoint, prefix_key, MapCache, Bridge, datapath_id_of, Overlay,
    endpoint_mappings, refers_to, order_key)

__all__ = [
    'IPAddress', 'IID_MAX', 'PRIORITY_UNUSED', 'ACTIONS', 'ModelError', 'parse_iid',
    'parse_address', 'Prefix', 'parse_prefix', 'as_prefix', 'parse_mac', 'parse_int',
    'parse_gateway', 'parse_bool', 'parse_action', 'parse_decimal', 'parse_rloc_address',
    'parse_host_address', 'parse_interface_name', 'unique_keys', 'IFNAMSIZ', 'Rloc', 'Mapping', 'Endpoint',
    'prefix_key', 'MapCache', 'Bridge', 'datapath_id_of', 'Overlay', 'endpoint_mappings',
    'refers_to', 'order_key']
