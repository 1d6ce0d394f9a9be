// Geography checks of claims 5-7 against published great-circle figures.
import { describe, expect, it } from 'vitest';
import {
  bearingDifferenceDeg,
  checkGeography,
  distanceKm,
  distanceMiles,
  initialBearingDeg,
  siteSeparationMilesMin,
} from '../../src/core/geo.js';

const dms = (d: number, m: number, s: number): number => d + m / 60 + s / 3600;
// Land's End and John o' Groats: the worked example of the movable-type.co.uk haversine page
// (968.9 km, initial bearing 009 deg 07' 11").
const landsEnd = { lat: dms(50, 3, 59), lon: -dms(5, 42, 53) };
const johnOGroats = { lat: dms(58, 38, 38), lon: -dms(3, 4, 12) };
const london = { lat: 51.5074, lon: -0.1278 };
const paris = { lat: 48.8566, lon: 2.3522 };
const newYork = { lat: 40.7128, lon: -74.006 };
const oxford = { lat: 51.752, lon: -1.2577 };
const reading = { lat: 51.4543, lon: -0.9781 };
const cambridge = { lat: 52.2053, lon: 0.1218 };
const brighton = { lat: 50.8225, lon: -0.1372 };

describe('great-circle distance and bearing', () => {
  it('matches published city-pair distances', () => {
    expect(distanceKm(landsEnd, johnOGroats)).toBeCloseTo(968.9, 0);
    expect(distanceKm(london, paris)).toBeGreaterThan(341);
    expect(distanceKm(london, paris)).toBeLessThan(346); // ~343.5 km
    expect(distanceKm(london, newYork)).toBeGreaterThan(5540);
    expect(distanceKm(london, newYork)).toBeLessThan(5600); // ~5570 km
    expect(distanceMiles(london, newYork)).toBeCloseTo(distanceKm(london, newYork) / 1.609344, 6);
  });

  it('is symmetric and zero for one point', () => {
    expect(distanceKm(paris, london)).toBeCloseTo(distanceKm(london, paris), 9);
    expect(distanceKm(paris, paris)).toBe(0);
  });

  it('gives the published initial bearing and the cardinal directions', () => {
    expect(initialBearingDeg(landsEnd, johnOGroats)).toBeCloseTo(dms(9, 7, 11), 2);
    expect(initialBearingDeg({ lat: 0, lon: 0 }, { lat: 10, lon: 0 })).toBeCloseTo(0, 9);
    expect(initialBearingDeg({ lat: 0, lon: 0 }, { lat: 0, lon: 10 })).toBeCloseTo(90, 9);
    expect(initialBearingDeg({ lat: 10, lon: 0 }, { lat: 0, lon: 0 })).toBeCloseTo(180, 9);
    expect(initialBearingDeg({ lat: 0, lon: 0 }, { lat: 0, lon: -10 })).toBeCloseTo(270, 9);
  });

  it('measures bearing differences the short way round', () => {
    expect(bearingDifferenceDeg(10, 350)).toBe(20);
    expect(bearingDifferenceDeg(90, 270)).toBe(180);
    expect(bearingDifferenceDeg(0, 0)).toBe(0);
  });
});

describe('claims 5-7 checks', () => {
  it('reports each mirror distance and warns only for one closer than 25 miles', () => {
    const r = checkGeography({ name: 'london', location: london }, [
      { name: 'paris', location: paris },
      { name: 'reading', location: reading }, // ~36 miles: fine
    ]);
    expect(r.mirrors.map((m) => m.name)).toEqual(['paris', 'reading']);
    expect(r.mirrors.every((m) => !m.tooClose)).toBe(true);
    expect(r.warnings.filter((w) => w.includes('claim 5'))).toEqual([]);
    const near = checkGeography({ name: 'oxford', location: oxford }, [{ name: 'abingdon', location: { lat: 51.671, lon: -1.2828 } }]);
    expect(near.mirrors[0]!.distanceMiles).toBeLessThan(siteSeparationMilesMin);
    expect(near.mirrors[0]!.tooClose).toBe(true);
    expect(near.warnings.join('\n')).toMatch(/abingdon is only \d+\.\d miles from oxford/);
  });

  it('with two mirrors says how far from diametrically opposed they are', () => {
    // Cambridge is north-north-east of London, Brighton due south: about 170 deg apart.
    const opposed = checkGeography({ name: 'london', location: london }, [
      { name: 'cambridge', location: cambridge },
      { name: 'brighton', location: brighton },
    ]);
    expect(opposed.opposition!.bearingDifferenceDeg).toBeGreaterThan(160);
    expect(opposed.opposition!.offOpposedDeg).toBeCloseTo(180 - opposed.opposition!.bearingDifferenceDeg, 9);
    expect(opposed.opposition!.substantiallyOpposed).toBe(true);
    expect(opposed.warnings).toEqual([]);
    // Paris and Brighton are both south-ish of London: far from opposed.
    const sameSide = checkGeography({ name: 'london', location: london }, [
      { name: 'paris', location: paris },
      { name: 'brighton', location: brighton },
    ]);
    expect(sameSide.opposition!.substantiallyOpposed).toBe(false);
    expect(sameSide.warnings.join('\n')).toMatch(/paris and brighton are .* from diametrically opposed/);
  });

  it('lists sites without a location instead of guessing', () => {
    const r = checkGeography({ name: 'london', location: london }, [{ name: 'east' }, { name: 'paris', location: paris }]);
    expect(r.unlocated).toEqual(['east']);
    expect(r.opposition).toBeUndefined();
    expect(checkGeography({ name: 'p' }, [{ name: 'm', location: paris }]).mirrors).toEqual([]);
  });
});
