"""Writes the README.md model card of a saved ESC folder from the `model_card.md` template."""

from pathlib import Path
from string import Template


TEMPLATE = Path(__file__).with_name("model_card.md")


def model_index(title: str, rows: list[dict], dataset: str = "validation speech") -> str:
    """`model-index` front matter with one result per bitrate (rows as `training.evaluation` writes them)."""
    lines = ["model-index:", f"- name: {title}", "  results:"]
    for row in rows:
        lines += [
            "  - task:",
            "      type: audio-to-audio",
            "      name: speech coding",
            "    dataset:",
            f"      name: {dataset}",
            "      type: speech",
            "    metrics:",
        ]
        for key, name in (("pesq", "PESQ-WB"), ("stoi", "STOI"), ("mel_distance", "mel distance"), ("si_sdr", "SI-SDR")):
            lines += [f"    - type: {key}", f"      name: {name} at {row['kbps']:g} kbps", f"      value: {row[key]:.4f}"]
    return "\n".join(lines) + "\n"


def render_model_card(model, source: str, title: str = "ESC", repo_id: str = "path/to/this/folder",
                      training: str = "", metrics: list[dict] | None = None) -> str:
    """The card text for `model`; `source` says where the weights come from, `training` may add a section and
    `metrics` (evaluation rows per bitrate) become the card's `model-index`."""
    config = model.config
    text = Template(TEMPLATE.read_text()).substitute(
        title=title,
        source=source,
        repo_id=repo_id,
        training=training,
        bitrates=" / ".join(f"{b:g}" for b in config.target_bandwidths),
        backbone="Swin Transformer" if config.backbone == "swin" else "CNN",
        quantizer="cross-scale residual vector" if config.quantizer == "csrvq" else "bottleneck residual vector",
        parameters=f"{model.num_parameters():,}",
        hidden_dims=config.hidden_dims,
        num_heads=config.num_heads,
        depth=config.depth,
        window_size=config.window_size,
        num_streams=config.num_streams,
        group_size=config.group_size,
        codebook_size=config.codebook_size,
        codebook_dims=config.codebook_dims,
        frame_rate=f"{config.frame_rate:g}",
        bitrate_per_stream=f"{config.bitrate_per_stream:g}",
    )
    if metrics:
        end = text.index("\n---\n", 4)
        text = text[:end + 1] + model_index(title, metrics) + text[end + 1 :]
    return text


def write_model_card(folder, model, source: str, **kwargs) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(model, source, **kwargs))
    return path
