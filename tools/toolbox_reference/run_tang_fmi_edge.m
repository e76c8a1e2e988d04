% Our driver: Tang's analysis_fmi default (edge) feature on the central 48x48 crops, as run_tang.m but with
% the 0-255 images divided by 256 (Octave's edge() rejects doubles outside [0, 1]; a power-of-two scale is
% exact, so the edge maps, including ties in the thinning, are those of the 0-255 images).
pkg load image; pkg load signal;
warning('off', 'all');
addpath('/tmp/toolboxes/Linfeng-Tang+Evaluation-for-Image-Fusion/Evaluation');
run('/tmp/toolboxes/run/triplets.m');
fid = fopen('/tmp/toolboxes/out/tang_fmi_edge.tsv', 'w');
for t = 1:size(T,1)
  id = [T{t,1} '_F_' T{t,2}];
  ir_image = imread([D T{t,1} '_A.png']); vi_image = imread([D T{t,1} '_B.png']); fused_image = imread([D id '.png']);
  if size(ir_image, 3)>2, ir_image = rgb2gray(ir_image); end
  if size(vi_image, 3)>2, vi_image = rgb2gray(vi_image); end
  if size(fused_image, 3)>2, fused_image = rgb2gray(fused_image); end
  img1_float = im2double(ir_image) * 255.0; img2_float = im2double(vi_image) * 255.0; img_f_float = im2double(fused_image) * 255.0;
  r = 105:152;
  v = analysis_fmi(img1_float(r,r)/256, img2_float(r,r)/256, img_f_float(r,r)/256);
  fprintf(fid, 'tang\t%s\tFMI_edge_crop48\t%.17g\n', id, v);
  printf('%s FMI_edge_crop48 %.17g\n', id, v); fflush(stdout);
end
fclose(fid);
