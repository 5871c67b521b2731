"""cxrlab: chest X-ray classification."""

from cxrlab.utils.resolvers import register as _register_resolvers

_register_resolvers()
