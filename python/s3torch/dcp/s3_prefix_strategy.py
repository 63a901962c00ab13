"""Key prefix strategies for DCP files: spread ranks over S3 partitions.

A strategy maps a rank to the prefix its files start with; the storage writer appends
``<n>.distcp``. Layouts (``epoch_num`` optional):

- DefaultPrefixStrategy:    ``__<rank>_``                             (torch's own layout)
- RoundRobinPrefixStrategy: ``<user_prefix>/[epoch_<n>/]__<rank>_``
- BinaryPrefixStrategy:     ``<rank in base 2, least significant digit first, padded>/[epoch_<n>/]__<rank>_``
- HexPrefixStrategy:        the same in base 16
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List, Optional, Sequence

_DIGITS = "0123456789abcdef"


class S3PrefixStrategyBase(ABC):
    """Base class: ``generate_prefix(rank)`` returns the key prefix of that rank's files."""

    @abstractmethod
    def generate_prefix(self, rank: int) -> str:
        """The key prefix of ``rank``'s files under the checkpoint path."""

    def __call__(self, rank: int) -> str:
        return self.generate_prefix(rank)


class DefaultPrefixStrategy(S3PrefixStrategyBase):
    """Every rank's files directly under the checkpoint path: ``__<rank>_``."""

    def generate_prefix(self, rank: int) -> str:
        """``__<rank>_``."""
        return f"__{rank}_"


def _epoch(epoch_num: Optional[int]) -> str:
    return "" if epoch_num is None else f"epoch_{epoch_num}/"


class RoundRobinPrefixStrategy(S3PrefixStrategyBase):
    """Ranks spread over ``user_prefixes`` in turn: ``<prefix>/[epoch_N/]__<rank>_``."""

    def __init__(self, user_prefixes: Sequence[str], epoch_num: Optional[int] = None) -> None:
        super().__init__()
        if not user_prefixes:
            raise ValueError("RoundRobinPrefixStrategy needs at least one prefix")
        self.user_prefixes: List[str] = [p.strip("/") for p in user_prefixes]
        self.epoch_num = epoch_num

    def generate_prefix(self, rank: int) -> str:
        """``<user_prefixes[rank % n]>/[epoch_N/]__<rank>_``."""
        p = self.user_prefixes[rank % len(self.user_prefixes)]
        return f"{p}/{_epoch(self.epoch_num)}__{rank}_"


class NumericPrefixStrategy(S3PrefixStrategyBase):
    """Ranks spread over S3 partitions by a base-``base`` digit pattern, least significant digit first."""

    def __init__(
        self,
        base: int,
        epoch_num: Optional[int] = None,
        min_prefix_length: int = 10,
        prefix_count: Optional[int] = None,
        *,
        min_prefix_len: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not 2 <= base <= 16:
            raise ValueError(f"base must be between 2 and 16, got {base}")
        if min_prefix_len is not None:  # the spelling the s3torchconnector README uses
            min_prefix_length = min_prefix_len
        if min_prefix_length < 1:
            raise ValueError(f"min_prefix_length must be >= 1, got {min_prefix_length}")
        if prefix_count is not None and prefix_count < 1:
            raise ValueError(f"prefix_count must be >= 1, got {prefix_count}")
        self.base = base
        self.epoch_num = epoch_num
        self.min_prefix_len = min_prefix_length
        self.prefix_count = prefix_count

    def _pattern(self, value: int) -> str:
        digits = []
        while value:
            value, d = divmod(value, self.base)
            digits.append(_DIGITS[d])
        s = "".join(digits)  # least significant digit first: neighbouring ranks differ up front
        return s.ljust(self.min_prefix_len, "0")

    def generate_prefix(self, rank: int) -> str:
        """``<digits of rank [mod prefix_count]>/[epoch_N/]__<rank>_``."""
        value = rank % self.prefix_count if self.prefix_count else rank
        return f"{self._pattern(value)}/{_epoch(self.epoch_num)}__{rank}_"


class BinaryPrefixStrategy(NumericPrefixStrategy):
    """NumericPrefixStrategy in base 2."""

    def __init__(
        self,
        epoch_num: Optional[int] = None,
        min_prefix_length: int = 10,
        prefix_count: Optional[int] = None,
        *,
        min_prefix_len: Optional[int] = None,
    ) -> None:
        super().__init__(2, epoch_num, min_prefix_length, prefix_count, min_prefix_len=min_prefix_len)


class HexPrefixStrategy(NumericPrefixStrategy):
    """NumericPrefixStrategy in base 16."""

    def __init__(
        self,
        epoch_num: Optional[int] = None,
        min_prefix_length: int = 10,
        prefix_count: Optional[int] = None,
        *,
        min_prefix_len: Optional[int] = None,
    ) -> None:
        super().__init__(16, epoch_num, min_prefix_length, prefix_count, min_prefix_len=min_prefix_len)
