"""Our driver: CDDFuse's utils/Evaluator.py (unchanged) as its test_MIF.py calls it:
ir = source B (CT/PET/SPECT), vi = source A (MRI), fi = fused, all read by image_read_cv2(path, 'GRAY')."""
import sys
import warnings

sys.path.insert(0, "/tmp/toolboxes/Zhaozixiang1228+MMIF-CDDFuse/utils")
warnings.filterwarnings("ignore")
from Evaluator import Evaluator, image_read_cv2  # noqa: E402

D = "/work/main/tests/metrics/fixtures/toolbox/"
T = [("ct-mri_16007", "average"), ("ct-mri_16007", "laplacian"), ("ct-mri_16007", "pca"),
     ("spect-mri_4011", "dwt"), ("spect-mri_4011", "laplacian"), ("pet-mri_25040", "average"), ("pet-mri_25040", "dwt")]
out = open("/tmp/toolboxes/out/cddfuse.tsv", "w")
for pair, m in T:
    tid = f"{pair}_F_{m}"
    vi = image_read_cv2(D + pair + "_A.png", "GRAY")
    ir = image_read_cv2(D + pair + "_B.png", "GRAY")
    fi = image_read_cv2(D + tid + ".png", "GRAY")
    vals = {"EN": Evaluator.EN(fi), "SD": Evaluator.SD(fi), "SF": Evaluator.SF(fi), "AG": Evaluator.AG(fi),
            "MI": Evaluator.MI(fi, ir, vi), "SCD": Evaluator.SCD(fi, ir, vi), "VIFF": Evaluator.VIFF(fi, ir, vi),
            "Qabf": Evaluator.Qabf(fi, ir, vi), "SSIM": Evaluator.SSIM(fi, ir, vi), "CC": Evaluator.CC(fi, ir, vi),
            "PSNR": Evaluator.PSNR(fi, ir, vi), "MSE": Evaluator.MSE(fi, ir, vi)}
    for k, v in vals.items():
        out.write(f"cddfuse\t{tid}\tEvaluator.{k}\t{float(v)!r}\n")
        print(tid, k, float(v))
out.close()
