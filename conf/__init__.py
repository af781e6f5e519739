"""The packaged Hydra config groups: target/, env/, model/, data/."""
