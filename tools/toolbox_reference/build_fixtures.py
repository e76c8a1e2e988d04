"""Turn the toolbox runs' .tsv outputs into tests/metrics/fixtures/toolbox_values.json (numbers + provenance).

python tools/toolbox_reference/build_fixtures.py OUT_DIR
(OUT_DIR holds vifb.tsv, tang.tsv, tang_fmi_edge.tsv, tang_ssim_fmiw.tsv, cddfuse.tsv)
See tools/toolbox_reference/README.md for how the .tsv files were produced.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CROP = [104, 152]  # python slice of the central 48x48 crop Tang's FMI ran on (Octave rows/cols 105:152)

PROVENANCE = {
    "vifb": {
        "repository": "https://github.com/xingchenzhang/VIFB",
        "commit": "22b2ea9d91499cc5962d9bdcae9c290270f0fade",
        "run": "GNU Octave 7.3.0 (Debian 12), image 2.14.0, signal 1.4.3; metrics/*.m unchanged; "
        "freqspace and blkproc (absent from Octave) supplied by shims of ours (tools/toolbox_reference/shims)",
        "call": "res = metricsX(imgVI, imgIR, fused) as compute_metrics.m, imread images, imgVI = source B "
        "(colour for SPECT/PET), imgIR = source A (MRI)",
        "preset": "vifb",
    },
    "tang": {
        "repository": "https://github.com/Linfeng-Tang/Evaluation-for-Image-Fusion",
        "commit": "0e87153be77320e31ef2cabb5820518d2ac56bac",
        "run": "GNU Octave 7.3.0 (Debian 12), image 2.14.0, signal 1.4.3; Evaluation/*.m unchanged; MATLAB's "
        "ssim (Image Processing Toolbox) and the Wavelet Toolbox's dwt2, absent from Octave, supplied by shims of "
        "ours written from their documentation (tools/toolbox_reference/shims/ssim.m, dwt2.m with PyWavelets' "
        "dmey filters)",
        "call": "as Evaluation_for_Single_Algorithm.m: imread, rgb2gray if 3 channels, "
        "analysis_Reference(fused, img1 = A (MRI), img2 = B, easy = 1); the easy = 0 calls made one by one "
        "(SSIM and FMI_w by run_tang_ssim_fmiw.m with the ssim / dwt2 shims: SSIM thus checks Tang's convention "
        "and our shim of MATLAB's ssim, not MathWorks' code); analysis_fmi (FMI_w included) on the central 48x48 "
        "crop (its Octave loop takes ~9 min per 256x256 call), the edge "
        "feature (run_tang_fmi_edge.m) with inputs / 256 (Octave's edge rejects doubles outside [0, 1]; a "
        "power-of-two scale is exact, so the edge maps, ties in the thinning included, are the 0-255 ones); "
        "Nabf_petrovic from a copy of analysis_nabf.m whose first line also returns NABF1 (computed, not "
        "returned, by the original)",
        "preset": "tang",
    },
    "cddfuse": {
        "repository": "https://github.com/Zhaozixiang1228/MMIF-CDDFuse",
        "commit": "fd8da1f39d8d403b7343e577bd5a30cba38c7b7b",
        "run": "utils/Evaluator.py unchanged, Python 3.8.18 with its requirements.txt pins numpy 1.21.5, "
        "opencv-python 4.5.3.56, scikit-image 0.19.2, scikit-learn 1.1.3, scipy 1.7.3",
        "call": "as test_MIF.py: ir = B, vi = A, fi = F, each image_read_cv2(path, 'GRAY'); Evaluator.X(fi, ir, vi)",
        "preset": "cddfuse",
    },
}

# toolbox function -> (our metric name, crop or None)
MAP = {
    "vifb": {
        "metricsAvg_gradient": "AG", "metricsCross_entropy": "CE", "metricsEdge_intensity": "EI",
        "metricsEntropy": "EN", "metricsMutinf": "MI", "metricsPsnr": "PSNR", "metricsQabf": "Qabf",
        "metricsQcb": "Qcb", "metricsQcv": "Qcv", "metricsRmse": "RMSE_vifb", "metricsSpatial_frequency": "SF",
        "metricsSsim": "SSIM", "metricsVariance": "SD",
    },
    "tang": {
        "EN": "EN", "SF": "SF", "SD": "SD", "PSNR": "PSNR", "MSE": "MSE", "MI": "MI", "VIF": "VIF", "AG": "AG",
        "CC": "CC", "SCD": "SCD", "Qabf": "Qabf", "Nabf_asrun": "Nabf_tang_asrun", "Nabf_kumar": "Nabf_kumar",
        "Nabf_petrovic": "Nabf", "MS_SSIM": "MS_SSIM_mef", "FMI_edge_crop48": "FMI_edge_octave",
        "FMI_dct_crop48": "FMI_dct", "FMI_none_crop48": "FMI_pixel", "FMI_gradient_crop48": "FMI_gradient",
        "SSIM": "SSIM", "FMI_w_crop48": "FMI_wavelet",
    },
    "cddfuse": {f"Evaluator.{k}": k for k in ("EN", "SD", "SF", "AG", "MI", "SCD", "Qabf", "SSIM", "CC", "PSNR",
                                               "MSE")}
    | {"Evaluator.VIFF": "VIF"},
}
TANG_FUNCS = {
    "EN": "analysis_Reference -> entropy", "SF": "SF_evaluation", "SD": "SD_evaluation",
    "PSNR": "PSNR_evaluation", "MSE": "MSE_evaluation", "MI": "MI_evaluation", "VIF": "vifp_mscale (x2)",
    "AG": "AG_evaluation", "CC": "CC_evaluation", "SCD": "analysis_SCD", "Qabf": "analysis_Qabf",
    "Nabf_asrun": "analysis_nabf(img1, img2, fused) as analysis_Reference calls it",
    "Nabf_kumar": "analysis_nabf(fused, img1, img2)", "Nabf_petrovic": "analysis_nabf NABF1 (fused, img1, img2)",
    "MS_SSIM": "analysis_ms_ssim(imgSeq, fused)", "FMI_edge_crop48": "analysis_fmi(A, B, F) (default 'edge')",
    "FMI_dct_crop48": "analysis_fmi(A, B, F, 'dct')", "FMI_none_crop48": "analysis_fmi(A, B, F, 'none')",
    "FMI_gradient_crop48": "analysis_fmi(A, B, F, 'gradient')",
    "SSIM": "0.5 ssim(F, A) + 0.5 ssim(F, B) (analysis_Reference; ssim: shims/ssim.m)",
    "FMI_w_crop48": "analysis_fmi(A, B, F, 'wavelet') (dwt2: shims/dwt2.m)",
}


def main() -> None:
    src = Path(sys.argv[1])
    values = []
    for tb in ("vifb", "tang", "cddfuse"):
        main_tsv, edge_tsv = src / f"{tb}.tsv", src / f"{tb}_fmi_edge.tsv"
        lines = main_tsv.read_text().splitlines() if main_tsv.exists() else []
        if edge_tsv.exists():  # Tang's edge FMI rerun on images / 256 replaces the / 255 values
            lines = [ln for ln in lines if "\tFMI_edge_crop48\t" not in ln] + edge_tsv.read_text().splitlines()
        shim_tsv = src / f"{tb}_ssim_fmiw.tsv"
        if shim_tsv.exists():  # Tang's SSIM and FMI_w, run with the ssim / dwt2 shims
            lines += shim_tsv.read_text().splitlines()
        for line in lines:
            cols = line.split("\t")
            if len(cols) < (6 if tb == "vifb" else 4):
                continue
            _, triplet, func, val = cols[:4]
            if func not in MAP[tb]:
                continue
            e = {"toolbox": tb, "triplet": triplet, "function": TANG_FUNCS.get(func, func) if tb == "tang" else func,
                 "metric": MAP[tb][func], "preset": PROVENANCE[tb]["preset"], "value": float(val)}
            if tb == "vifb" and float(cols[4]) != 0.0:
                e["imag"] = float(cols[4])
            if func.endswith("_crop48"):
                e["crop"] = CROP
            values.append(e)
    out = {"description": "Values computed by the reference toolboxes themselves on the fixture triplets in "
           "tests/metrics/fixtures/toolbox/ (sources *_A.png = MRI, *_B.png = CT/SPECT/PET, fused *_F_<method>.png "
           "by neurofuse fuse). Only numbers; no toolbox code. Regenerate: tools/toolbox_reference/README.md",
           "provenance": PROVENANCE, "values": values}
    dst = ROOT / "tests" / "metrics" / "fixtures" / "toolbox_values.json"
    dst.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(values)} values to {dst}")


if __name__ == "__main__":
    main()
