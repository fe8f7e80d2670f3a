"""ChipExpert training: the data sets and the CPT -> SFT -> DPO stages with their evaluation."""
