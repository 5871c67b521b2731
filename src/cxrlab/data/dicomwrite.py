"""Write radiographs as DICOM files, the way modalities store them.

Used to lay out DICOM datasets (SIIM-COVID, RSNA) from the phantom for tests, examples and the
cache benchmark: 8 to 16 stored bits, MONOCHROME1 or 2, rescale and window tags, and the
compressed transfer syntaxes found in the public collections (RLE, JPEG baseline, JPEG-LS,
JPEG 2000). Reading is ``cxrlab.data.imageio.read_dicom``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# short names -> transfer syntax UIDs
SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",  # Explicit VR Little Endian (uncompressed)
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
    "jpeg": "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8 bit, lossy)
    "jpegls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
}


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    syntax: str = "explicit",
    patient_id: str = "anon",
    study_uid: str | None = None,
    series_uid: str | None = None,
    view: str | None = "PA",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    pixel_data: bool = True,
) -> Path:
    """Write ``pixels`` (2-D uint8 or uint16 stored values) as a DX image; returns the path.

    ``window`` is (center, width), ``rescale`` (slope, intercept). ``pixel_data=False`` writes a
    header-only file (what a broken export looks like).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, generate_uid

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"write_dicom: need a 2-D uint8/uint16 array, got {pixels.dtype} {pixels.shape}"
        )
    if syntax not in SYNTAXES:
        raise ValueError(f"write_dicom: syntax {syntax!r} is not one of {list(SYNTAXES)}")
    allocated = 8 if pixels.dtype == np.uint8 else 16
    bits_stored = bits_stored or allocated
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(SYNTAXES["explicit"])
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = float(rescale[0]), float(rescale[1])
    if not pixel_data:
        ds.save_as(path, enforce_file_format=True)
        return path
    ds.PixelData = pixels.tobytes()
    if syntax == "jpeg":
        from PIL import Image

        if pixels.dtype != np.uint8:
            raise ValueError("write_dicom: JPEG baseline stores 8-bit images only")
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = UID(SYNTAXES["jpeg"])
        ds.LossyImageCompression = "01"
    elif syntax != "explicit":
        ds.compress(SYNTAXES[syntax], pixels)  # pydicom's RLE, pyjpegls, pylibjpeg-openjpeg
    ds.save_as(path, enforce_file_format=True)
    return path
