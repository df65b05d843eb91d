"""Output dimensions: a Matryoshka model's leading dimensions (``truncate_dim``).

Choice: when the model normalises, the shortened vectors are normalised again, so they stay
unit length and a dot product stays a cosine. sentence-transformers' ``truncate_dim`` cuts
after its Normalize stage and leaves them shorter than unit length: cosines (and rankings)
agree with embedrt's, raw dot products and vector values do not.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigurationError, Param
from .pooling import FloatArray, l2_normalize


def check_truncate_dim(truncate_dim: object, dim: int) -> None:
    """Check that ``truncate_dim`` is None or an integer in ``1..dim``.

    Front ends pass the value as they received it (a JSON number, say) and let this check
    it, so every front end refuses the same values with the same message.

    Raises:
        ConfigurationError: it is not an integer in range (the message names the range;
            ``limit`` is ``dim``).
    """
    if truncate_dim is None:
        return
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or not 1 <= truncate_dim <= dim:
        raise ConfigurationError(
            f"{{truncate_dim}} must be an integer from 1 to {dim} (the model's dimension), "
            f"got {truncate_dim!r}",
            params=(Param("truncate_dim"),), limit=dim,
        )


def truncate_dims(vectors: FloatArray, truncate_dim: int | None, normalize: bool) -> FloatArray:
    """The first ``truncate_dim`` dimensions of ``vectors`` (all when None).

    Normalised again when the model normalises (``normalize``); see the module docstring.
    """
    if truncate_dim is None or truncate_dim >= vectors.shape[1]:
        return vectors
    kept = np.ascontiguousarray(vectors[:, :truncate_dim])
    return l2_normalize(kept) if normalize else kept
