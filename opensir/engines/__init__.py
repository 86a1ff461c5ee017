"""Generation and what serves it: transformers and vLLM generators (in process, or vLLM servers over
HTTP), the embedders, the format scaffolds, and the weight syncs that keep every generator on the
trainer's weights."""
