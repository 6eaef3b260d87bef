"""Write params files in tests with the YAML library DVC uses (ruamel, YAML 1.2)."""
from pathlib import Path


def dump(data, path: Path) -> None:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with open(path, "w") as handle:
        yaml.dump(data, handle)
