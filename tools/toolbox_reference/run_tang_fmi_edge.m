% Our driver: Tang's analysis_fmi default (edge) feature on the central 48x48 crops, as run_tang.m but with
% the 0-255 images divided by 256 (Octave's edge() rejects doubles outside [0, 1]; a power-of-two scale is
% exact, so the edge maps, including ties in the thinning, are those of the 0-255 images).
pkg load image; pkg load signal;
warning('off', 'all');
addpath('/tmp/toolboxes/Linfeng-Tang+Evaluation-for-Image-Fusion/Evaluation');
run('/tmp/toolboxes/run/triplets.m');
fid = fopen('/tmp/toolboxes/out/tang_fmi_edge.tsv', 'w');
for t = 1:size(T,1)
  [id, ~, ~, ~, img1_float, img2_float, img_f_float] = tang_read(D, T, t);
  r = 105:152;
  v = analysis_fmi(img1_float(r,r)/256, img2_float(r,r)/256, img_f_float(r,r)/256);
  fprintf(fid, 'tang\t%s\tFMI_edge_crop48\t%.17g\n', id, v);
  printf('%s FMI_edge_crop48 %.17g\n', id, v); fflush(stdout);
end
fclose(fid);
