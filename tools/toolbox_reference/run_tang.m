% Our driver: Tang's Evaluation_for_Single_Algorithm.m steps (imread, rgb2gray when 3 channels), then
% analysis_Reference(fused, img1 = A (MRI), img2 = B, easy = 1) unchanged; the easy = 0 branch's calls
% made one by one as analysis_Reference makes them (its ssim and dwt2 are not in Octave);
% analysis_fmi on the central 48x48 crop (rows/cols 105:152) (the Octave loop takes ~9 min per full 256x256 call).
pkg load image; pkg load signal;
warning('off', 'all');  % Octave's per-element short-circuit warnings slow the loops down
addpath('/tmp/toolboxes/Linfeng-Tang+Evaluation-for-Image-Fusion/Evaluation');
addpath('/tmp/toolboxes/modified');
run('/tmp/toolboxes/run/triplets.m');
fid = fopen('/tmp/toolboxes/out/tang.tsv', 'w');
for t = 1:size(T,1)
  [id, ir_image, vi_image, fused_image, img1_float, img2_float, img_f_float] = tang_read(D, T, t);
  [EN, SF,SD,PSNR,MSE, MI, VIF, AG, CC, SCD, Qabf] = analysis_Reference(fused_image,ir_image,vi_image, 1);
  vals = {'EN',EN;'SF',SF;'SD',SD;'PSNR',PSNR;'MSE',MSE;'MI',MI;'VIF',VIF;'AG',AG;'CC',CC;'SCD',SCD;'Qabf',Qabf};
  [s1,s2] = size(ir_image); imgSeq = zeros(s1, s2, 2); imgSeq(:, :, 1) = img1_float; imgSeq(:, :, 2) = img2_float;
  vals(end+1,:) = {'Nabf_asrun', analysis_nabf(img1_float, img2_float, img_f_float)};
  [nk, np, qk, lk] = analysis_nabf_all(img_f_float, img1_float, img2_float);
  vals(end+1,:) = {'Nabf_kumar', nk}; vals(end+1,:) = {'Nabf_petrovic', np};
  vals(end+1,:) = {'Qabf_petrovic2005', qk}; vals(end+1,:) = {'Labf_petrovic2005', lk};
  vals(end+1,:) = {'MS_SSIM', analysis_ms_ssim(imgSeq, img_f_float)};
  r = 105:152;
  % edge(): Octave's isgray() rejects doubles outside [0, 1], so the edge FMI gets the crops / 255; this
  % value is superseded by run_tang_fmi_edge.m (/ 256, exact; / 255 changes ties in the edge thinning).
  vals(end+1,:) = {'FMI_edge_crop48', analysis_fmi(img1_float(r,r)/255, img2_float(r,r)/255, img_f_float(r,r)/255)};
  vals(end+1,:) = {'FMI_dct_crop48', analysis_fmi(img1_float(r,r), img2_float(r,r), img_f_float(r,r), 'dct')};
  vals(end+1,:) = {'FMI_none_crop48', analysis_fmi(img1_float(r,r), img2_float(r,r), img_f_float(r,r), 'none')};
  vals(end+1,:) = {'FMI_gradient_crop48', analysis_fmi(img1_float(r,r), img2_float(r,r), img_f_float(r,r), 'gradient')};
  tang_write(fid, id, vals);
end
fclose(fid);
