"""The runner's Hydra launcher plugin (Hydra imports every module under ``hydra_plugins``)."""
