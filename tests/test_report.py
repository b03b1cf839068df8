import html
import re
import shutil
import subprocess
from html.parser import HTMLParser

import PIL.Image
import pytest
import soundfile as sf
from conftest import SPEECH

from esc_hf.eval import report
from esc_hf.cli import load_model, main
from esc_hf.eval.baselines import OpusCodec
from esc_hf.eval.metrics import METRICS, pesq_wb

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """The elements a test needs: every <audio>, <img> and .version card, with their attributes and text."""

    def __init__(self, text: str):
        super().__init__()
        self.audio, self.images, self.cards, self.notes, self._card, self._note = [], [], [], [], None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "audio":
            self.audio.append(attrs)
            if self._card is not None:
                self._card["audio"] = attrs
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "div" and "version" in attrs.get("class", "").split():
            self._card = {"codec": attrs["data-codec"], "text": ""}
            self.cards.append(self._card)
        elif tag == "p" and attrs.get("class") == "note":
            self._note = ""

    def handle_endtag(self, tag):
        if tag == "div":  # a card holds no nested div
            self._card = None
        if tag == "p" and self._note is not None:
            self.notes.append(self._note)
            self._note = None

    def handle_data(self, data):
        if self._card is not None:
            self._card["text"] += data
        if self._note is not None:
            self._note += data


def _opus_installed() -> bool:
    try:
        OpusCodec().check()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def rates():
    bandwidths = load_model(None).config.target_bandwidths
    return (bandwidths[0], bandwidths[-1])


@pytest.fixture(scope="module")
def made(tmp_path_factory, rates):
    """The report for the two real test clips, the packaged model at its lowest and highest rate, and Opus."""
    out = tmp_path_factory.mktemp("report") / "site"
    codecs = ("opus",) if _opus_installed() else ()
    index = report.make_report(SPEECH[0].parent, out, kbps=rates, codecs=codecs, log=lambda *_: None)
    return out, Page(index.read_text(encoding="utf-8")), codecs


def test_players_images_and_numbers(made, rates):
    out, page, codecs = made
    versions = 1 + len(rates) + 3 * len(codecs)  # original, ESC rates, Opus at 6/9/12 kbps
    assert len(page.audio) == len(SPEECH) * versions
    assert {c["codec"] for c in page.cards} == {"original", "esc", *codecs}
    for card in page.cards:
        audio = card["audio"]
        path = out / audio["src"]
        data, rate = sf.read(str(path), dtype="float32")
        assert rate == 16000 and data.size / rate == pytest.approx(float(audio["data-seconds"]), abs=1e-3)
        assert "controls" in audio
        if card["codec"] != "original":
            assert re.search(r"PESQ \d\.\d\d · STOI 0?\.\d{3} · SI-SDR -?\d+\.\d dB · mel \d+\.\d\d · \d+\.\d\d kbps real",
                             card["text"]), card["text"]  # fmt: skip
    for image in page.images:
        assert (out / image["src"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image["alt"]
    assert len(page.images) == len(page.audio) + 4  # a spectrogram per player, and a rate-distortion plot per metric


def test_rate_distortion_is_one_small_figure_per_metric_so_a_phone_can_stack_them(made):
    out, page, _ = made
    plots = [image for image in page.images if image["src"].startswith("img/rd-")]
    assert [p["src"] for p in plots] == [f"img/rd-{m}.png" for m in METRICS]
    for plot in plots:
        width, height = PIL.Image.open(out / plot["src"]).size
        # One panel, drawn about as wide as a desktop grid cell: a phone shrinks it by a third at most.
        assert 480 <= width <= 640 and width < 2 * height, (plot["src"], width, height)
    text = (out / "index.html").read_text(encoding="utf-8")
    assert re.search(r"@media \(max-width:\s*\d+px\)\{[^}]*\}?\.rd\{grid-template-columns:minmax\(0,1fr\)\}", text)


def test_si_sdr_is_explained_beside_the_means(made):
    out, _, _ = made
    text = (out / "index.html").read_text(encoding="utf-8")
    after_table = text.split("<h2>Means over all clips</h2>", 1)[1].split("</table></div>", 1)[1]
    note = re.match(r"<p>([^<]*)</p>", after_table)
    assert note, after_table[:300]
    note = note.group(1)
    assert all(word in note for word in ("SI-SDR", "phase", "PESQ", "STOI", "mel")), note


def _plain(summary: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", summary))


def _tags_balanced(summary: str) -> bool:
    stack = []
    for closing, tag in re.findall(r"<(/?)(\w+)[^>]*>", summary):
        if closing and (not stack or stack.pop() != tag):
            return False
        if not closing:
            stack.append(tag)
    return not stack


def test_model_summary_of_the_packaged_card_is_whole_clean_sentences():
    summary = report._model_summary(load_model(None), None)
    plain = _plain(summary)
    assert _tags_balanced(summary) and set(re.findall(r"</?(\w+)", summary)) <= {"code", "strong", "em"}
    for markup in ("`", "**", "](", "<http"):
        assert markup not in plain, (markup, plain)
    assert not re.search(r"\b(shared|checkpoints|data|runs|examples|benchmarks)/", plain), plain
    assert plain.endswith(".") and "expect the codec to do best on material like it." in plain
    assert "616 Ogg Opus files" in plain and "2.19 h" in plain and "<strong>2.19 h</strong>" in summary
    assert "8,736,581 parameters" in plain


def test_model_summary_renders_markdown_and_cuts_at_a_sentence_end(tmp_path):
    card = tmp_path / "my-model"
    card.mkdir()
    filler = " ".join(f"Sentence {i} is about **bold {i}** and *this* and `code_{i}` with 4.5 kbps, e.g. here."
                      for i in range(40))  # fmt: skip
    (card / "README.md").write_text(
        "---\nlibrary_name: transformers\n---\n\n# My [ESC](https://example.com) <i>model</i>\n\nIntro.\n\n"
        "## Training\n\nTrained with `esc_hf` (`examples/train.py`) on `/home/me/corpus/train` for 4 steps, see "
        "[the paper](https://arxiv.org/abs/2404.19441) & <b>notes</b>.\n\n"
        "| kbps | PESQ |\n|---|---|\n| 1.5 | 1.1 |\n\n"
        "```bash\npython examples/train.py --data_dir /home/me/corpus\n```\n\n"
        f"Validation: 2 clips. {filler} The exact command:\n\n```bash\nrun it\n```\n\n## Use\n\nNot this.\n"
    )  # fmt: skip
    summary = report._model_summary(load_model(None), str(card))
    plain = _plain(summary)
    assert summary.startswith("<code>my-model</code>, My ESC model: ") and _tags_balanced(summary)
    assert "<code>esc_hf</code>" in summary and "<strong>bold 0</strong>" in summary and "<em>this</em>" in summary
    assert "Trained with esc_hf on a local folder for 4 steps, see the paper & notes. Validation: 2 clips." in plain
    assert "&amp; notes" in summary and "href" not in summary and "<b>" not in summary
    assert not re.search(r"/home|examples/|corpus|kbps \| PESQ|python|run it|Not this|exact command", plain), plain
    # Whole sentences up to the budget: the summary stops after some "Sentence N ... here." and before the next one.
    last = re.findall(r"Sentence (\d+)", plain)[-1]
    assert plain.endswith(f"code_{last} with 4.5 kbps, e.g. here.")
    assert 0 < int(last) < 39 and len(plain) < report.SUMMARY_CHARS + 300


def test_numbers_are_those_of_the_files_beside_the_page(made, rates):
    out, page, _ = made
    card = next(c for c in page.cards if c["codec"] == "esc" and f"ESC {rates[-1]:g} kbps" in c["text"])
    decoded = sf.read(str(out / card["audio"]["src"]), dtype="float32")[0]
    original_src = card["audio"]["src"].split("-")[0].replace("audio/", "") + "-original.flac"
    reference = sf.read(str(out / "audio" / original_src), dtype="float32")[0]
    shown = float(re.search(r"PESQ (\d\.\d\d)", card["text"]).group(1))
    assert pesq_wb(reference, decoded) == pytest.approx(shown, abs=0.0051)  # shown with two decimals


def test_page_is_self_contained_small_and_says_how_it_was_made(made):
    out, _, _ = made
    text = (out / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(https?:)?//", text), "the page must not load anything from elsewhere"
    assert '<meta name="viewport"' in text and "<h2>Means over all clips</h2>" in text
    assert "transformers" in text and "Made " in text
    size = float(re.search(r"Size: ([\d.]+) MB in (\d+) files", text).group(1))
    actual = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    assert size == pytest.approx(actual, abs=0.01) and actual < 10
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no temporary folder is left behind"


def test_unreadable_files_and_missing_codecs_are_noted(tmp_path, monkeypatch, rates):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(SPEECH[0], clips / SPEECH[0].name)
    (clips / "broken.wav").write_bytes(b"RIFF not really a wave file")
    monkeypatch.setenv("PATH", "")  # no opusenc
    index = report.make_report(clips, tmp_path / "out", kbps=rates[:1], codecs=("opus",), log=lambda *_: None)
    page = Page(index.read_text(encoding="utf-8"))
    assert any("broken.wav was skipped" in n for n in page.notes)
    assert any("opus is left out" in n and "opusenc" in n for n in page.notes)
    assert {c["codec"] for c in page.cards} == {"original", "esc"}


def test_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path, rates):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.ReportError, match="no audio files"):
        report.make_report(empty, tmp_path / "out", kbps=rates)
    with pytest.raises(report.ReportError, match="unknown codec"):
        report.make_report(SPEECH[0].parent, tmp_path / "out", kbps=rates, codecs=("mp3",))
    with pytest.raises(ValueError, match="kbps"):
        report.make_report(SPEECH[0].parent, tmp_path / "out", kbps=(0.123,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_failed_run_keeps_the_previous_report(tmp_path, monkeypatch, rates):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("previous report")

    def fail(*args, **kwargs):
        raise RuntimeError("codec crashed")

    monkeypatch.setattr(report, "code_aligned", fail)
    with pytest.raises(RuntimeError, match="codec crashed"):
        report.make_report(SPEECH[0].parent, out, kbps=rates, codecs=(), log=lambda *_: None)
    assert (out / "index.html").read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("esc: error: no audio files") and error.count("\n") == 1
    assert main(["report", str(SPEECH[0].parent), str(tmp_path / "out"), "--kbps", "fast"]) == 1
    assert "--kbps takes a comma-separated list" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_in_a_real_browser_every_player_has_its_clip_duration(made, tmp_path):
    out, page, _ = made
    url = (out / "index.html").as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=15000"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    loaded = Page(dom).audio
    assert len(loaded) == len(page.audio)
    for audio in loaded:
        assert "data-loaded-duration" in audio, f"{audio['src']} did not load in the browser"
        expected = float(audio["data-seconds"])
        assert abs(float(audio["data-loaded-duration"]) - expected) <= 0.01 * expected, audio
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={shot}", url], capture_output=True, timeout=120,
                   check=True)  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_in_a_real_browser_the_rate_distortion_panels_fit_a_phone_and_a_desktop(made, tmp_path):
    out, _, _ = made
    # Headless Chromium lays a page out at least 500 px wide, so the page is shown in frames 400 (a phone) and
    # 1200 px wide; a copy of it (kept out of the report folder, whose size the page states) posts where each
    # plot landed to the outer page, whose DOM the test reads.
    inner = tmp_path / "inner.html"
    inner.write_text((out / "index.html").read_text(encoding="utf-8").replace(
        "<head>", f'<head><base href="{out.as_uri()}/">', 1).replace("</body>", """<script>
window.addEventListener('load', function(){
  var boxes = Array.from(document.querySelectorAll('.rd img')).map(function(i){ var r = i.getBoundingClientRect();
    return [r.left, r.top, r.width].map(Math.round).join(' '); });
  parent.postMessage(window.innerWidth + ':' + boxes.join(','), '*');
});
</script></body>""", 1), encoding="utf-8")  # fmt: skip
    outer = tmp_path / "outer.html"
    outer.write_text(f"""<!DOCTYPE html><html><body><div id="boxes"></div>
<iframe src="{inner.as_uri()}" style="width:400px;height:3000px;border:0"></iframe>
<iframe src="{inner.as_uri()}" style="width:1200px;height:3000px;border:0"></iframe><script>
window.addEventListener('message', function(e){{ var p = document.createElement('p');
  p.setAttribute('data-boxes', e.data); document.getElementById('boxes').appendChild(p); }});
</script></body></html>""", encoding="utf-8")  # fmt: skip
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--hide-scrollbars", "--virtual-time-budget=10000", "--window-size=1300,1000"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", outer.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout  # fmt: skip
    boxes = {}
    for width, found in re.findall(r'data-boxes="(\d+):([^"]*)"', dom):
        boxes[int(width)] = [tuple(map(int, box.split())) for box in found.split(",") if box]
    assert sorted(boxes) == [400, 1200] and all(len(b) == len(METRICS) for b in boxes.values()), dom[:2000]
    # A phone: one panel under the other, each nearly the screen's width.
    assert all(w >= 360 for _, _, w in boxes[400]) and len({left for left, _, _ in boxes[400]}) == 1, boxes
    # A desktop: two by two, each panel about as wide as it was drawn.
    assert len({left for left, _, _ in boxes[1200]}) == 2 and len({top for _, top, _ in boxes[1200]}) == 2, boxes
    assert all(400 <= w <= 640 for _, _, w in boxes[1200]), boxes
