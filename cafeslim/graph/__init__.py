"""Graph analysis: trace a model and find its coupled channel groups."""

from .analyze import analyze
from .channel_graph import ChannelGraph, Group, IndexSpec, Member, OpRecord, TensorDesc, spec_from_json, spec_to_json

__all__ = ["analyze", "ChannelGraph", "Group", "IndexSpec", "Member", "OpRecord", "TensorDesc",
           "spec_from_json", "spec_to_json"]
