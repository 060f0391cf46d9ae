"""Operations on whole feature matrices: k-means (FAISS or torch), k-nearest neighbours and kNN
graphs, and the clustering metrics (Hungarian ACC, NMI, ARI)."""
