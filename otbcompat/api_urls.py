"""otbcompat's endpoints under /api/v1/: the claim (by serial + claim code or by OTB device id)."""

from django.urls import path

from otbcompat import apis

urlpatterns = [
    path("boxes/claim", apis.BoxClaimApi.as_view(), name="box-claim"),
]
