"""A listening report: one self-contained HTML page to hear and see ESC beside other codecs on your own clips.

`make_report(in_dir, out_dir, …)` (and `esc report IN_DIR OUT_DIR`) writes `OUT_DIR/index.html` with, for every
clip, the original and each codec at each rate as an `<audio controls>` player (FLAC beside the page), a
spectrogram (the same colour scale across a row) and the clip's PESQ-WB, STOI, SI-SDR, mel distance and real
bitrate; above them the rate–distortion plots (one per metric), the table of means, the model's summary and how
the page was made. The page needs no server and loads nothing from elsewhere. The folder is written beside its destination and
renamed into place when complete, so a failed run leaves no half-written report.
"""

import datetime
import html
import importlib.metadata
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from ..codec.audio_io import AudioFileError, list_audio_files, load_audio
from ..utils.atomic_files import atomic_directory
from .baselines import RATE, CodecUnavailable, all_codecs, code_aligned, curves_by_codec, score, summarize
from .metrics import METRICS
from .plotting import LABELS, plot_rate_distortion, spectrogram_db

DEFAULT_KBPS = (1.5, 3.0, 6.0, 9.0)
DEFAULT_CODECS = ("opus", "amr-wb")
MAX_SECONDS = 10.0
SPECTROGRAM_RANGE_DB = 80.0


class ReportError(ValueError):
    """The report cannot be made from what was given (no clips, unknown codec, unsupported rate)."""


def list_clips(in_dir: str | Path) -> list[Path]:
    try:
        return list_audio_files(in_dir)
    except ValueError as error:  # no folder, or no audio in it
        raise ReportError(str(error)) from None


def _save_spectrogram(audio: np.ndarray, path: Path, top_db: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(3.6, 1.5), dpi=80)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.imshow(spectrogram_db(audio), origin="lower", aspect="auto", cmap="magma",
                vmin=top_db - SPECTROGRAM_RANGE_DB, vmax=top_db, extent=(0, audio.size / RATE, 0, RATE / 2000))  # fmt: skip
    axis.set_axis_off()
    figure.savefig(path, format="png", pil_kwargs={"optimize": True})
    plt.close(figure)


def _versions() -> str:
    names = ("esc_hf", "torch", "transformers", "numpy", "soundfile", "pesq", "pystoi", "matplotlib")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found) + f"; Python {platform.python_version()} on {platform.system()} {platform.machine()}"


SUMMARY_CHARS = 800  # of plain text from the card: room for the packaged card's whole training-data paragraph

# A code span naming a file or folder (`shared/data/speech/train`, `/home/me/corpus`): where the card's author kept
# things, which means nothing to a listener and may be private.
_PATH = r"`[^`\s]*[/\\][^`\s]*`"
# A sentence ends at . ! or ? (perhaps closed by ), ", ' or **) before a space and a capital, digit or Markdown
# opener; "2.19 h" or "4:22.12.3-1" has no space after its dot.
_SENTENCE_END = re.compile(r"(?<=[.!?])((?:\*\*|[)\"'])*)\s+(?=[A-Z0-9`*_\[(])")


def _without_paths(sentence: str) -> str:
    """The sentence without the card's file paths, or "" where it is about a command (`python examples/…`)."""
    if re.search(r"`[^`]*\s[^`]*[/\\][^`]*`", sentence):
        return ""
    sentence = re.sub(rf"\s*\({_PATH}\)", "", sentence)  # "with `esc_hf` (`examples/train.py`)"
    sentence = re.sub(rf"^{_PATH}[^:.]*:\s*", "", sentence)  # a label "`data/train` of this project: 616 files"
    sentence = re.sub(_PATH, "a local folder", sentence)
    return sentence[:1].upper() + sentence[1:]


def _inline_html(markdown: str) -> str:
    """Markdown inline markup as HTML: bold, italics and code kept, links and images reduced to their text (the
    page loads and links nothing from elsewhere)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    text = html.escape(re.sub(r"</?[A-Za-z][^>]*>", "", text), quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*|__(.+?)__", lambda m: f"<strong>{m.group(1) or m.group(2)}</strong>", text)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)


def _card_sentences(section: str) -> list[str]:
    """The prose of a card section as whole sentences (Markdown source): tables, code blocks, headings, HTML and
    the unfinished tail of a paragraph (such as "The exact command:" before its code block) are left out."""
    paragraphs, lines, fenced = [], [], False
    for line in section.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            stripped = ""
        if fenced or not stripped or stripped[0] in "|#<>" or stripped.startswith("- "):
            if lines:
                paragraphs.append(" ".join(lines))
            lines = []
        else:
            lines.append(stripped)
    sentences = []
    for paragraph in paragraphs:
        parts = _SENTENCE_END.split(paragraph)
        # split() keeps the closers it matched as every second item: they belong to the sentence before them.
        pieces = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2)]
        sentences += [s.strip() for s in pieces if re.search(r"[.!?](\*\*|[)\"'])*$", s.strip())]
    return sentences


def _plain_length(markdown: str) -> int:
    return len(re.sub(r"<[^>]*>", "", html.unescape(_inline_html(markdown))))


def _model_summary(model, model_name: str | None) -> str:
    """The checkpoint, its size and its training data as HTML: whole sentences of the model card's "Training
    data" (else "Training") section, when the folder has a card, without the card's file paths."""
    from ..codec.loading import DEFAULT_MODEL

    folder = Path(model_name) if model_name else DEFAULT_MODEL
    params = sum(p.numel() for p in model.parameters())
    config = model.config
    rates = f"{config.target_bandwidths[0]:g}–{config.target_bandwidths[-1]:g} kbps"
    # A local folder by its name alone (its path is the user's own business), a Hub id as it is.
    shown = folder.name if model_name and folder.is_dir() else model_name
    name = f"<code>{html.escape(shown)}</code>" if model_name else "The packaged default model"
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    title = re.search(r"^# (.+)$", text, re.MULTILINE)
    if title:
        name += f", {_inline_html(title.group(1).strip())}"
    summary = (f"{name}: {params:,} parameters, {rates} in {config.num_streams} streams of "
               f"{config.bandwidth_for_num_streams(1):g} kbps.")  # fmt: skip
    for heading in ("## Training data", "## Training"):
        if f"\n{heading}\n" in text:
            section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
            chosen, length = [], 0
            for sentence in filter(None, map(_without_paths, _card_sentences(section))):
                length += _plain_length(sentence) + 1
                if chosen and length > SUMMARY_CHARS:
                    break
                chosen.append(_inline_html(sentence))
            if chosen:
                summary += f" {heading[3:]}: " + " ".join(chosen)
            break
    return summary


SI_SDR_NOTE = (
    "SI-SDR measures how closely the waveform, phase included, matches the original: ESC's decoder rebuilds the "
    "phase freely, so it can sound fine and still score far below zero, where a waveform codec such as Opus scores "
    "above; judge perceived quality by PESQ-WB, STOI and mel distance, and by ear."
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:12px;
color:#222;background:#fff;line-height:1.4}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th:first-child,td:first-child{text-align:left}
.table-wrap{overflow-x:auto}
.row{display:flex;flex-wrap:wrap;gap:10px}
.version{border:1px solid #ddd;border-radius:6px;padding:6px;width:290px;max-width:100%;box-sizing:border-box}
.version h4{margin:0 0 4px;font-size:.95em}
.version audio{width:100%}
.version img{width:100%;height:auto;display:block;background:#000}
.metrics{font-size:.8em;color:#444;margin:4px 0 0}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:4px 8px}
.rd{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:10px;max-width:900px}
.rd img{width:100%;height:auto;display:block}
[hidden]{display:none!important}
fieldset{border:1px solid #ccc}
@media (max-width:640px){.version{width:100%}.rd{grid-template-columns:minmax(0,1fr)}}
"""

# Writes each player's duration into the DOM once its metadata has loaded (browser tests read it), and filters
# the versions by codec.
SCRIPT = """
document.querySelectorAll('audio').forEach(function(a){
  function done(){ if(isFinite(a.duration)){ a.setAttribute('data-loaded-duration', a.duration.toFixed(4)); } }
  a.addEventListener('loadedmetadata', done); if(a.readyState>0){ done(); }
});
document.querySelectorAll('input[name=codec]').forEach(function(box){
  box.addEventListener('change', function(){
    document.querySelectorAll('.version[data-codec="'+box.value+'"]').forEach(function(v){ v.hidden=!box.checked; });
  });
});
"""


def _metrics_line(row: dict) -> str:
    return (f"PESQ {row['pesq']:.2f} · STOI {row['stoi']:.3f} · SI-SDR {row['si_sdr']:.1f} dB · "
            f"mel {row['mel_distance']:.2f} · {row['file_kbps']:.2f} kbps real")  # fmt: skip


def _version_card(label: str, codec: str, audio_href: str, image_href: str, seconds: float, row: dict | None) -> str:
    metrics = f'<p class="metrics">{html.escape(_metrics_line(row))}</p>' if row else ""
    return (
        f'<div class="version" data-codec="{html.escape(codec)}"><h4>{html.escape(label)}</h4>'
        f'<audio controls preload="metadata" src="{html.escape(audio_href)}" data-seconds="{seconds:.4f}" '
        f'aria-label="{html.escape(label)}"></audio>'
        f'<img src="{html.escape(image_href)}" alt="spectrogram: {html.escape(label)}" loading="lazy">{metrics}</div>'
    )


def _means_table(summary: list[dict]) -> str:
    head = "<tr><th>codec</th><th>kbps</th><th>real kbps</th><th>PESQ-WB</th><th>STOI</th><th>SI-SDR</th><th>mel</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(r['codec'])}</td><td>{r['kbps']:g}</td><td>{r['file_kbps']:.2f}</td>"
        f"<td>{r['pesq']:.2f}</td><td>{r['stoi']:.3f}</td><td>{r['si_sdr']:.1f}</td><td>{r['mel_distance']:.2f}</td></tr>"
        for r in summary
    )
    return f'<div class="table-wrap"><table>{head}{body}</table></div>'


def make_report(in_dir: str | Path, out_dir: str | Path, model_name: str | None = None,
                kbps: tuple[float, ...] = DEFAULT_KBPS, codecs: tuple[str, ...] = DEFAULT_CODECS,
                max_clips: int | None = None, max_seconds: float = MAX_SECONDS, command: str | None = None,
                log=print) -> Path:  # fmt: skip
    """Writes the report folder `out_dir` (replaced atomically) and returns the path of its `index.html`."""
    from ..codec.loading import load_model

    if max_clips is not None and max_clips < 1:
        raise ReportError(f"--clips must be at least 1, got {max_clips}")
    if not 0 < max_seconds <= 600:
        raise ReportError(f"clips are cut to 0-600 s, got {max_seconds:g}")
    paths = list_clips(in_dir)
    model = load_model(model_name)
    for rate in kbps:
        model.config.num_streams_for_bandwidth(rate)  # ValueError naming the rates the model has
    known = all_codecs(model)
    unknown = [name for name in codecs if name not in known or name == "esc"]
    if unknown:
        raise ReportError(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(sorted(set(known) - {'esc'}))}")
    esc, notes, others = known["esc"], [], []
    for name in codecs:
        try:
            known[name].check()
            others.append(known[name])
        except CodecUnavailable as reason:
            notes.append(f"{name} is left out: {reason}.")
    versions = [(esc, rate) for rate in kbps] + [(codec, rate) for codec in others for rate in codec.rates]

    rows, sections = [], []
    with atomic_directory(out_dir) as folder, tempfile.TemporaryDirectory() as scratch:
        (folder / "audio").mkdir()
        (folder / "img").mkdir()
        clips_done = 0
        for index, path in enumerate(paths):
            if max_clips is not None and clips_done >= max_clips:
                break
            name = str(path.relative_to(in_dir))
            try:
                audio, _ = load_audio(path, RATE)
            except AudioFileError as error:
                notes.append(f"{name} was skipped: {error}.")
                continue
            audio = audio[: int(max_seconds * RATE)]
            if audio.size < RATE // 4:
                notes.append(f"{name} was skipped: shorter than 0.25 s.")
                continue
            clips_done += 1
            log(f"{name}: {audio.size / RATE:.2f} s")
            stem = f"{index:03d}"
            top_db = float(spectrogram_db(audio).max())
            cards = []
            sf.write(folder / "audio" / f"{stem}-original.flac", audio, RATE, subtype="PCM_16")
            _save_spectrogram(audio, folder / "img" / f"{stem}-original.png", top_db)
            reference = sf.read(folder / "audio" / f"{stem}-original.flac", dtype="float32")[0]
            cards.append(_version_card("original", "original", f"audio/{stem}-original.flac",
                                       f"img/{stem}-original.png", audio.size / RATE, None))  # fmt: skip
            for codec, rate in versions:
                decoded, row = code_aligned(codec, audio, rate, Path(scratch))
                label = f"{'ESC' if codec is esc else codec.name} {rate:g} kbps"
                base = f"{stem}-{codec.name}-{rate:g}"
                sf.write(folder / "audio" / f"{base}.flac", np.clip(decoded, -1, 1), RATE, subtype="PCM_16")
                # Scored as a listener hears it: the 16-bit files the page plays (at low quality, 16-bit rounding
                # alone moves PESQ by a few hundredths).
                decoded = sf.read(folder / "audio" / f"{base}.flac", dtype="float32")[0]
                row.update(score(reference, decoded), file=name)
                rows.append(row)
                _save_spectrogram(decoded, folder / "img" / f"{base}.png", top_db)
                cards.append(_version_card(label, codec.name, f"audio/{base}.flac", f"img/{base}.png",
                                           audio.size / RATE, row))  # fmt: skip
            sections.append(f'<section><h3>{html.escape(name)} ({audio.size / RATE:.2f} s)</h3>'
                            f'<div class="row">{"".join(cards)}</div></section>')  # fmt: skip
        if not rows:
            raise ReportError(f"no readable clip in {in_dir}: " + " ".join(notes))
        summary = summarize(rows)
        # One small figure per metric: the page lays them out two by two, or one under the other on a phone, where
        # a single four-panel figure would be shrunk to unreadable.
        curves = curves_by_codec(summary)
        for metric in METRICS:
            plot_rate_distortion(curves, folder / "img" / f"rd-{metric}.png", metrics=(metric,),
                                 panel_size=(4.2, 3.0), dpi=130)  # fmt: skip
        page = _page(summary, sections, notes, _model_summary(model, model_name), command, clips_done, max_seconds, folder)
        (folder / "index.html").write_text(page, encoding="utf-8")
    return Path(out_dir) / "index.html"


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _page(summary, sections, notes, model_summary, command, clips, max_seconds, folder: Path) -> str:
    codecs = list(dict.fromkeys(["original"] + [r["codec"] for r in summary]))
    boxes = "".join(f'<label><input type="checkbox" name="codec" value="{html.escape(c)}" checked> {html.escape(c)}'
                    f"</label> " for c in codecs)  # fmt: skip
    made = (f"Made {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with "
            f"<code>{html.escape(command or ' '.join(sys.argv))}</code>; {html.escape(_versions())}.")  # fmt: skip
    note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    plots = "".join(f'<img src="img/rd-{m}.png" alt="rate-distortion plot: {html.escape(LABELS[m][:-2])} against '
                    f'bitrate, one line per codec">' for m in METRICS)  # fmt: skip

    def render(size_text: str) -> str:
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>ESC listening report</title><style>{CSS}</style></head><body>"
            "<h1>ESC listening report</h1>"
            f"<p>{clips} clips, cut to at most {max_seconds:g} s, each coded by every codec below. Metrics compare "
            "each version with the original (16 kHz): PESQ-WB and STOI (higher is better), SI-SDR in dB (higher "
            "is better), mel distance (lower is better), and the real bitrate of what the codec wrote.</p>"
            f"{note_html}<h2>Model</h2><p>{model_summary}</p>"
            f'<h2>Rate–distortion</h2><p>Means over the {clips} clips, one line per codec.</p>'
            f'<div class="rd">{plots}</div>'
            f"<h2>Means over all clips</h2>{_means_table(summary)}<p>{SI_SDR_NOTE}</p>"
            f'<h2>Clips</h2><fieldset><legend>Show codecs</legend>{boxes}</fieldset>{"".join(sections)}'
            f"<h2>How this page was made</h2><p>{made}</p><p>{size_text}</p>"
            f"<script>{SCRIPT}</script></body></html>"
        )

    assets = _folder_size(folder)
    files = sum(1 for p in folder.rglob("*") if p.is_file()) + 1
    draft = render("Size: 0000.00 MB in 0000 files.")
    total = assets + len(draft.encode("utf-8"))
    return render(f"Size: {total / 1e6:.2f} MB in {files} files.")
