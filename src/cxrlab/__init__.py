"""cxrlab: chest X-ray classification."""

import logging as _logging

from cxrlab.utils.resolvers import register as _register_resolvers

_register_resolvers()


class _NoVendorTips(_logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" line, printed at every Trainer
    start: an advertisement for a cloud service has no place in a run's log (train.log)."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoVendorTips())
