function [id, img1, img2, imgf, img1_float, img2_float, img_f_float] = tang_read(D, T, t)
% Triplet t of triplets.m as Tang's Evaluation_for_Single_Algorithm.m reads it: imread, rgb2gray when
% 3 channels (uint8 img1 = A (MRI), img2 = B, imgf = F), and analysis_Reference's im2double(x) * 255.
  id = [T{t,1} '_F_' T{t,2}];
  img1 = imread([D T{t,1} '_A.png']); img2 = imread([D T{t,1} '_B.png']); imgf = imread([D id '.png']);
  if size(img1, 3)>2, img1 = rgb2gray(img1); end
  if size(img2, 3)>2, img2 = rgb2gray(img2); end
  if size(imgf, 3)>2, imgf = rgb2gray(imgf); end
  img1_float = im2double(img1) * 255.0; img2_float = im2double(img2) * 255.0; img_f_float = im2double(imgf) * 255.0;
end
