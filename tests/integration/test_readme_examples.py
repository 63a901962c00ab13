"""s3torchconnector's README examples, run against s3torch with only the import changed.

Each snippet below is the README's code with `s3torchconnector` replaced by `s3torch` and
its placeholders (<BUCKET>, <PREFIX>, ...) filled in. Credentials and endpoint come from the
environment, as they would for a real user (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
Differences, each forced by this machine and not by the API: torchvision cannot be installed
beside the CPU torch here, so `torchvision.models.resnet18()` is a small torch.nn model.
"""

from __future__ import annotations

import pytest
import torch

from s3torch._servers import ACCESS_KEY, SECRET_KEY
from tests.conftest import BUCKET, make_client


@pytest.fixture(scope="module")
def readme_objects(seaweed):  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    for i in range(6):
        client.put(BUCKET, f"readme/data/{i}.txt", f"sample {i}".encode())
    client.put(BUCKET, "large_object.bin", b"x" * (120 * 1024 * 1024))
    return seaweed


@pytest.fixture
def aws_env(readme_objects, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ENDPOINT_URL", readme_objects.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return readme_objects


def small_model() -> torch.nn.Module:  # stands in for torchvision.models.resnet18()
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10)
    )


def test_sample_examples_datasets(aws_env) -> None:  # type: ignore[no-untyped-def]
    from s3torch import S3IterableDataset, S3MapDataset

    DATASET_URI = f"s3://{BUCKET}/readme/data/"
    REGION = "us-east-1"

    iterable_dataset = S3IterableDataset.from_prefix(DATASET_URI, region=REGION)

    keys = []
    for item in iterable_dataset:
        keys.append(item.key)

    map_dataset = S3MapDataset.from_prefix(DATASET_URI, region=REGION)
    item = map_dataset[0]
    bucket = item.bucket
    key = item.key
    content = item.read()
    len(content)

    assert keys == [f"readme/data/{i}.txt" for i in range(6)]
    assert (bucket, key, content) == (BUCKET, "readme/data/0.txt", b"sample 0")


def test_sample_examples_checkpoint(aws_env) -> None:  # type: ignore[no-untyped-def]
    from s3torch import S3Checkpoint

    CHECKPOINT_URI = f"s3://{BUCKET}/readme/ckpt/"
    REGION = "us-east-1"
    checkpoint = S3Checkpoint(region=REGION)

    model = small_model()

    with checkpoint.writer(CHECKPOINT_URI + "epoch0.ckpt") as writer:
        torch.save(model.state_dict(), writer)

    with checkpoint.reader(CHECKPOINT_URI + "epoch0.ckpt") as reader:
        state_dict = torch.load(reader)

    model.load_state_dict(state_dict)
    for k, v in small_model().state_dict().items():
        assert state_dict[k].shape == v.shape


def _key(reader):  # type: ignore[no-untyped-def]
    return reader.key


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_parallel_training_sharding(aws_env) -> None:  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader

    from s3torch import S3IterableDataset

    DATASET_URI = f"s3://{BUCKET}/readme/data/"
    REGION = "us-east-1"
    dataset = S3IterableDataset.from_prefix(DATASET_URI, region=REGION, enable_sharding=True)
    dataloader = DataLoader(dataset, num_workers=4, batch_size=None, collate_fn=_key)
    assert sorted(dataloader) == [f"readme/data/{i}.txt" for i in range(6)]


def test_direct_s3client_usage(aws_env) -> None:  # type: ignore[no-untyped-def]
    from s3torch._s3client import S3Client

    REGION = "us-east-1"
    BUCKET_NAME = BUCKET
    OBJECT_KEY = "readme/large_object.bin"

    s3_client = S3Client(region=REGION)

    data = b"content" * 1048576
    s3writer = s3_client.put_object(bucket=BUCKET_NAME, key=OBJECT_KEY)
    s3writer.write(data)
    s3writer.close()

    s3reader = s3_client.get_object(bucket=BUCKET_NAME, key=OBJECT_KEY)
    data = s3reader.read()
    assert data == b"content" * 1048576


def test_reader_configurations(aws_env) -> None:  # type: ignore[no-untyped-def]
    from s3torch import S3MapDataset, S3ReaderConstructor
    from s3torch._s3client import S3Client

    REGION = "us-east-1"
    BUCKET_NAME = BUCKET
    OBJECT_NAME = "large_object.bin"
    DATASET_URI = f"s3://{BUCKET}/readme/data/"

    s3_client = S3Client(region=REGION)
    reader_constructor = S3ReaderConstructor.range_based(
        buffer_size=0  # No buffer, for direct transfer
    )
    s3reader = s3_client.get_object(bucket=BUCKET_NAME, key=OBJECT_NAME, reader_constructor=reader_constructor)

    buffer = bytearray(10 * 1024 * 1024)  # 10MB buffer
    s3reader.seek(100 * 1024 * 1024)  # Skip to 100MB offset
    bytes_read = s3reader.readinto(buffer)  # Direct read into buffer
    assert bytes_read == 10 * 1024 * 1024 and buffer == b"x" * bytes_read

    dataset = S3MapDataset.from_prefix(DATASET_URI, region=REGION, reader_constructor=S3ReaderConstructor.sequential())

    contents = []
    for item in dataset:
        content = item.read()
        contents.append(content)
    assert contents == [f"sample {i}".encode() for i in range(6)]
