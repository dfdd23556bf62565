"""Reference-view conditioning: self-attention run jointly over the tokens of V views.

Difix's reference model (``nvidia/difix_ref``) replaces the forward of every transformer block
of the SD-Turbo UNet so that its *self*-attention sees the tokens of the render and of a
reference (training) view together: ``(b v) n d -> b (v n) d`` with v = 2, attention, then back
to ``(b v) n d``. Cross-attention (to the prompt) and the feed-forward stay per view, and only
the render's view is kept at the end. The block's LayerNorm and residual add act per token, so
doing the regrouping inside the ``attn1`` processor is exactly equivalent, and needs no change
to diffusers' blocks: :func:`install_reference_attention` sets a :class:`ReferenceAttnProcessor`
on every ``attn1`` of a ``UNet2DConditionModel`` (no new parameters: the published
``difix_ref`` UNet has the same state-dict keys as a plain one).

Batches are ordered view-major inside each sample: ``[render_0, ref_0, render_1, ref_1, ...]``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["join_views", "split_views", "ViewGrouping", "ReferenceAttnProcessor", "install_reference_attention"]


def join_views(tokens: Tensor, num_views: int) -> Tensor:
    """[(B V), N, D] -> [B, (V N), D]: the tokens of a sample's V views side by side."""
    bv, n, d = tokens.shape
    if bv % num_views:
        raise ValueError(f"batch of {bv} is not a multiple of {num_views} views")
    return tokens.reshape(bv // num_views, num_views * n, d)


def split_views(tokens: Tensor, num_views: int) -> Tensor:
    """[B, (V N), D] -> [(B V), N, D] (inverse of :func:`join_views`)."""
    b, vn, d = tokens.shape
    return tokens.reshape(b * num_views, vn // num_views, d)


class ViewGrouping:
    """How many consecutive batch entries form one sample (1: no reference; 2: render + reference).

    One instance is shared by every processor of a UNet, so one assignment switches them all.
    """

    def __init__(self, num_views: int = 1) -> None:
        self.num_views = num_views


class ReferenceAttnProcessor:
    """An ``Attention`` processor that runs self-attention jointly over ``grouping.num_views`` views.

    Wraps diffusers' standard processor (``inner``) and only regroups the tokens around it;
    cross-attention calls (``encoder_hidden_states`` given) pass through unchanged.
    """

    def __init__(self, inner: Any, grouping: ViewGrouping) -> None:
        self.inner = inner
        self.grouping = grouping

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        v = self.grouping.num_views
        if v == 1 or encoder_hidden_states is not None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if hidden_states.ndim != 3:
            raise ValueError(f"reference attention expects tokens [B*V, N, D], got {tuple(hidden_states.shape)}")
        if attention_mask is not None:
            raise ValueError("reference attention does not support an attention mask")
        joint = self.inner(attn, join_views(hidden_states, v), None, None, temb, **kwargs)
        return split_views(joint, v)


def install_reference_attention(unet: nn.Module) -> ViewGrouping:
    """Put a :class:`ReferenceAttnProcessor` on every self-attention (``attn1``) of ``unet``.

    Returns the shared :class:`ViewGrouping` (``num_views`` starts at 1, i.e. plain attention).
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    grouping = ViewGrouping(1)
    processors = {
        name: (ReferenceAttnProcessor(AttnProcessor2_0(), grouping) if name.endswith("attn1.processor") else proc)
        for name, proc in unet.attn_processors.items()  # type: ignore[attr-defined]
    }
    if not any(isinstance(p, ReferenceAttnProcessor) for p in processors.values()):
        raise ValueError("the UNet has no transformer self-attention (attn1) to condition on a reference view")
    unet.set_attn_processor(processors)  # type: ignore[attr-defined]
    return grouping
