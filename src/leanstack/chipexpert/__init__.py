"""ChipExpert, an IC-design assistant: its knowledge base (corpus) and retrieval so far."""
