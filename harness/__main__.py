"""Entry point: `python -m harness [overrides]`, or `python -m harness -m key=a,b` for a sweep."""

import gc
import sys

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
    try:
        main()
        # Every run is recorded by now. Freezing the heap skips the final garbage collections over
        # TensorFlow's and MLflow's objects, which take about 2 s at interpreter exit.
        gc.freeze()
    except KeyboardInterrupt as interrupt:
        # The run and the sweep's parent run are already ended KILLED; exit as the shell expects.
        from harness.job import JobTerminated

        print(f"interrupted: {interrupt or 'KeyboardInterrupt'}", file=sys.stderr)
        sys.exit(143 if isinstance(interrupt, JobTerminated) else 130)
