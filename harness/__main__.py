"""Entry point: `python -m harness [overrides]`, or `python -m harness -m key=a,b` for a sweep."""

import hydra
from omegaconf import DictConfig

from harness.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig):
    # TensorFlow is imported here, not above, so --help and --cfg return at once.
    from harness.job import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
