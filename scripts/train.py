"""Fine-tune with fairness metrics from a YAML config.

    accelerate launch scripts/train.py --config configs/quickstart.yaml [--key value ...]

Flags override the YAML; an unknown key is an error that names it; --help lists every key. A user error
(command line, config, data, output folder) is one `fairtune: error:` line and exit status 2.
"""

from fairtune.cli import train_main

if __name__ == "__main__":
    train_main()
