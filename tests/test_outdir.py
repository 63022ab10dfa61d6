from perfkit.workload import outdir


def test_input_identity_hashes_the_whole_input_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir, "HASH_CHUNK", 10)  # many chunks: the streamed hash must cover every one
    path = tmp_path / "x.fa"
    path.write_bytes(b">a\n" + b"ACGT" * 1000)
    first = outdir.input_identity(path)
    assert first["size"] == 4003 and "whole file" in first["fingerprint"]
    path.write_bytes(b">b\n" + b"ACGT" * 1000)  # same size, one id renamed
    assert outdir.input_identity(path)["sha256"] != first["sha256"]
    path.write_bytes(b">a\n" + b"ACGT" * 500 + b"TTTT" + b"ACGT" * 499)  # same size, one base in the middle
    assert outdir.input_identity(path)["sha256"] != first["sha256"]
    path.write_bytes(b">a\n" + b"ACGT" * 1000)
    assert outdir.input_identity(path)["sha256"] == first["sha256"]
