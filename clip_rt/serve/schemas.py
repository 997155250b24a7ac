"""The JSON bodies of the HTTP API (pydantic models: validation and the OpenAPI document at /docs)."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake worth a 400, not silence


class TextsRequest(_Strict):
    texts: list[str] = Field(description="non-empty strings; longer than the context they are cut, as CLIP does",
                             examples=[["a photo of a dog", "a red bicycle"]])


class ImagesRequest(_Strict):
    images: list[str] = Field(description="base64-encoded image files (JPEG, PNG, ...), not URLs")
    names: Optional[list[str]] = Field(None, description="one name per image, echoed in files and errors")


class ClassifyRequest(ImagesRequest):
    labels: list[str] = Field(description="class names, each put into every template", examples=[["cat", "dog"]])
    templates: Union[str, list[str]] = Field(
        "simple", description="a built-in set (simple, imagenet), one template with {} or a list of them")
    top_k: int = Field(5, ge=1, description="labels returned per image")


class SearchRequest(_Strict):
    text: Optional[str] = Field(None, description="query text")
    image: Optional[str] = Field(None, description="query image, base64-encoded")
    text_weight: float = Field(0.5, ge=0.0, le=1.0, description="weight of the text when both are given")
    top_k: int = Field(10, ge=1, description="results returned")
    like: Optional[int] = Field(None, ge=0, description="an item id from earlier results: search by that item's "
                                                        "stored vector (more like this), without text or image")
    folder: Optional[str] = Field(None, description="only photos in this folder or below it")
    after: Optional[str] = Field(None, description="only photos taken on or after this day (YYYY-MM-DD)")
    before: Optional[str] = Field(None, description="only photos taken on or before this day (YYYY-MM-DD)")
    camera: Optional[str] = Field(None, description="only photos from this camera, as GET /facets lists it")


class EmbeddingsResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="L2-normalized float32 vectors, in input order")


class FileError(BaseModel):
    file: str
    error: str


class ImageEmbeddingsResponse(EmbeddingsResponse):
    files: list[str] = Field(description="the name of each embedded image (row i of embeddings)")
    errors: list[FileError] = Field(description="images that could not be read, with the reason")


class Label(BaseModel):
    label: str
    score: float


class Classification(BaseModel):
    file: str
    labels: list[Label]


class ClassifyResponse(BaseModel):
    results: list[Classification]
    errors: list[FileError]
    cache: str = Field(description="where the label embeddings came from: memory, disk or computed")


class Hit(BaseModel):
    id: int = Field(description="the item's id: GET /thumb/{id}, /photo/{id}, /item/{id}; like={id}")
    file: str = Field(description="the photo, or the video a frame belongs to")
    score: float = Field(description="cosine similarity with the query")
    time: Optional[float] = Field(None, description="a video frame's time in the video, seconds (absent for photos)")


class SearchResponse(BaseModel):
    results: list[Hit]


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, and what to do")
    errors: Optional[list[FileError]] = Field(None, description="per-image reasons, when images were unreadable")
