% Our driver: the two easy = 0 columns of Tang's analysis_Reference that need MATLAB toolboxes, with the
% shims/ssim.m and shims/dwt2.m (ours) on the path, called exactly as analysis_Reference calls them:
%   SSIM = 0.5 * ssim(img_f_float, img1_float) + 0.5 * ssim(img_f_float, img2_float)
%   FMI_w = analysis_fmi(img1_float, img2_float, img_f_float, 'wavelet')  (on the central 48x48 crop, as the
%   other FMI columns: the Octave loop takes ~9 min per 256x256 call)
% Images as Evaluation_for_Single_Algorithm.m reads them (imread, rgb2gray for colour), img1 = A (MRI), img2 = B.
pkg load image; pkg load signal;
warning('off', 'all');
addpath('/tmp/toolboxes/shims');
addpath('/tmp/toolboxes/Linfeng-Tang+Evaluation-for-Image-Fusion/Evaluation');
run('/tmp/toolboxes/run/triplets.m');
fid = fopen('/tmp/toolboxes/out/tang_ssim_fmiw.tsv', 'w');
for t = 1:size(T,1)
  [id, ~, ~, ~, img1_float, img2_float, img_f_float] = tang_read(D, T, t);
  SSIM1 = ssim(img_f_float, img1_float);
  SSIM2 = ssim(img_f_float, img2_float);
  vals = {'SSIM', 0.5 * SSIM1 + 0.5 * SSIM2};
  r = 105:152;
  vals(end+1,:) = {'FMI_w_crop48', analysis_fmi(img1_float(r,r), img2_float(r,r), img_f_float(r,r), 'wavelet')};
  tang_write(fid, id, vals);
end
fclose(fid);
