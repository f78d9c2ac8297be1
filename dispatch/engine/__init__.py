"""``dispatch-engine``: a transcoding engine that takes jobs from the dispatch server
and runs them with the local ffmpeg."""
