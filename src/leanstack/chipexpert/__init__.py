"""ChipExpert, an IC-design assistant: knowledge base, retrieval, an assistant that answers with
citations (HTTP API and web page included) and the ChipICD-Bench benchmark."""
