"""python -m flexops.models restore (through main(argv)): tiny networks saved as checkpoints, sample
photos from scikit-image cropped small; outputs, tiles, controls, contact sheets and one-line errors."""

import pytest
import torch
from PIL import Image

from flexops.models import data, train
from flexops.models.__main__ import main
from flexops.models.cresmd import CResMD
from flexops.models.restore import LABEL_HEIGHT, SWEEP_STEPS

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.SwinIR import SwinIR as SpandrelSwinIR  # noqa: E402

HEIGHT, WIDTH = 24, 32


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(data.sample_images()[:2]):
        data.save_image(image[:, :HEIGHT, :WIDTH], folder / f"photo{i}.png")
    return folder


def zoo_checkpoint(path, name, net, **network):
    train.save_checkpoint(path, train.run_state(0, {"model": name, "network": network}, model=net))
    return path


def restore(*args):
    main(["restore", *map(str, args), "--no-progress"])


def size(path):
    with Image.open(path) as image:
        return image.size


def test_swinir_checkpoint_on_a_folder_with_tiles(tmp_path, photos):
    net = SpandrelSwinIR(embed_dim=8, depths=[2], num_heads=[2], window_size=8, img_size=16,
                         upsampler="pixelshuffledirect", upscale=2)
    torch.save({"params": net.state_dict()}, tmp_path / "swinir.pth")
    restore(tmp_path / "swinir.pth", "--input", photos, "--output", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo0.png", "photo1.png"]
    assert size(tmp_path / "out" / "photo0.png") == (2 * WIDTH, 2 * HEIGHT)
    restore(tmp_path / "swinir.pth", "--input", photos / "photo0.png", "--output", tmp_path / "tiled", "--tile", "16",
            "--tile-overlap", "8")
    untiled = data.load_image(tmp_path / "out" / "photo0.png")
    tiled = data.load_image(tmp_path / "tiled" / "photo0.png")
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().mean() < 0.05  # the same network: tiles change the context, not the picture
    restore(tmp_path / "swinir.pth", "--input", photos / "photo0.png", "--output", tmp_path / "bf16", "--precision",
            "bf16")
    # bf16 rounds each layer's products to 8 bits of mantissa: a few levels of 255 at most on average
    assert (data.load_image(tmp_path / "bf16" / "photo0.png") - untiled).abs().mean() < 0.02


def test_tunable_omega_and_sweep(tmp_path, photos):
    from flexops.models.tunable import TunableEDSR

    settings = dict(num_params=2, n_resblocks=1, n_feats=8)
    path = zoo_checkpoint(tmp_path / "edsr.pt", "tunable_edsr", TunableEDSR(**settings), **settings)
    restore(path, "--input", photos / "photo0.png", "--output", tmp_path / "a", "--omega", "0.7,0.3")
    assert size(tmp_path / "a" / "photo0.png") == (WIDTH, HEIGHT)
    restore(path, "--input", photos / "photo0.png", "--output", tmp_path / "sweep", "--sweep")
    assert size(tmp_path / "sweep" / "photo0_sweep.png") == (SWEEP_STEPS * WIDTH, HEIGHT + LABEL_HEIGHT)


def test_cresmd_level_sweep_starts_at_the_input(tmp_path, photos):
    path = zoo_checkpoint(tmp_path / "cresmd.pt", "cresmd", CResMD(nf=8, nb=2), nf=8, nb=2)
    restore(path, "--input", photos / "photo0.png", "--output", tmp_path / "out", "--level", "1,15,none", "--sweep")
    with Image.open(tmp_path / "out" / "photo0_sweep.png") as sheet:
        first = sheet.crop((0, LABEL_HEIGHT, WIDTH, LABEL_HEIGHT + HEIGHT))
        with Image.open(photos / "photo0.png") as photo:
            assert first.tobytes() == photo.convert("RGB").tobytes()  # tasks 0: CResMD's identity


def test_flexir_pointer_sweep(tmp_path, photos):
    from flexops.models.flexir import FlexIR

    settings = dict(embed_dim=8, depths=[1, 1, 1], num_heads=[2, 2, 2], window_size=8, img_size=16, upsampler="")
    path = zoo_checkpoint(tmp_path / "flexir.pt", "flexir", FlexIR(**settings), **settings)
    restore(path, "--input", photos / "photo0.png", "--output", tmp_path / "out", "--pointer", "2")
    restore(path, "--input", photos / "photo0.png", "--output", tmp_path / "sweep", "--sweep")
    assert size(tmp_path / "sweep" / "photo0_sweep.png") == (3 * WIDTH, HEIGHT + LABEL_HEIGHT)


def one_line_error(capsys, *args):
    with pytest.raises(SystemExit) as exit:
        restore(*args)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]  # after the line that says which network restores, if any
    assert message.startswith("python -m flexops.models: error: ")
    return message


def test_errors(tmp_path, photos, capsys):
    path = zoo_checkpoint(tmp_path / "cresmd.pt", "cresmd", CResMD(nf=8, nb=2), nf=8, nb=2)
    out = tmp_path / "out"
    assert "does not exist" in one_line_error(capsys, path, "--input", tmp_path / "none.png", "--output", out)
    assert "neither a checkpoint" in one_line_error(capsys, tmp_path / "none.pt", "--input", photos, "--output", out)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert "not a readable image" in one_line_error(capsys, path, "--input", tmp_path / "bad.png", "--output", out,
                                                    "--tasks", "0,0.3,0")
    torch.save({"backbone.weight": torch.zeros(1)}, tmp_path / "other.pth")
    assert "looked for" in one_line_error(capsys, tmp_path / "other.pth", "--input", photos, "--output", out)
    assert "--tasks" in one_line_error(capsys, path, "--input", photos, "--output", out)
    assert "--omega does not apply to CResMD" in one_line_error(capsys, path, "--input", photos, "--output", out,
                                                                "--omega", "1,0")
    if not torch.cuda.is_available():
        assert "use bf16" in one_line_error(capsys, path, "--input", photos, "--output", out, "--tasks", "0,0.3,0",
                                            "--precision", "fp16")
