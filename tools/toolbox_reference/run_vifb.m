% Our driver: VIFB metrics called as VIFB's compute_metrics.m calls them, res = metricsX(imgVI, imgIR, fused),
% on images as imread returns them. imgVI = source B (colour for SPECT/PET), imgIR = source A (MRI).
pkg load image; pkg load signal;
warning('off', 'all');  % Octave's per-element short-circuit warnings slow the loops down
addpath('/tmp/toolboxes/shims');
addpath('/tmp/toolboxes/xingchenzhang+VIFB/metrics');
run('/tmp/toolboxes/run/triplets.m');
names = {'Avg_gradient','Cross_entropy','Edge_intensity','Entropy','Mutinf','Psnr','Qabf','Qcb','Qcv','Rmse','Spatial_frequency','Ssim','Variance'};
fid = fopen('/tmp/toolboxes/out/vifb.tsv', 'w');
for t = 1:size(T,1)
  id = [T{t,1} '_F_' T{t,2}];
  A = imread([D T{t,1} '_A.png']); B = imread([D T{t,1} '_B.png']); F = imread([D id '.png']);
  for k = 1:numel(names)
    tic; res = feval(['metrics' names{k}], B, A, F); el = toc;
    fprintf(fid, 'vifb\t%s\tmetrics%s\t%.17g\t%.17g\t%.2f\n', id, names{k}, real(res), imag(res), el);
    printf('%s %s %.10g (%.1fs)\n', id, names{k}, real(res), el); fflush(stdout);
  end
end
fclose(fid);
